/* es_dwconv2d: four channels per 32-bit load. The loop runs channel group outermost so a
 * group's weights are widened to int16 once per call (into a small stack array that the taps
 * read with one LDRD each), then every output pixel of that group: per tap one LDR of four
 * input channels, two SXTAB16 that subtract in_zp while widening, four SMLABB/SMLATT.
 * Taps that fall in the padding are skipped (they would contribute (x - zp) * w = 0). */
#include "es_acle.h"
#include "es_conv.h"

/* the valid kernel taps [lo, hi) along one axis for an output starting at input i0 */
ES_INLINE void tap_range(int32_t i0, int32_t dil, int32_t k, int32_t size, int32_t *lo,
                         int32_t *hi) {
    int32_t l = i0 < 0 ? (-i0 + dil - 1) / dil : 0;
    int32_t h = size - i0 <= 0 ? 0 : (size - i0 + dil - 1) / dil;
    *lo = l;
    *hi = h < k ? h : k;
}

static void dw_channel(const es_conv_t *p, const int8_t *in, int8_t *out, int32_t c) {
    const int32_t ch = p->in_c;
    for (int32_t oy = 0; oy < p->out_h; oy++) {
        const int32_t iy0 = oy * p->stride_h - p->pad_t;
        int32_t ky0, ky1;
        tap_range(iy0, p->dil_h, p->kh, p->in_h, &ky0, &ky1);
        for (int32_t ox = 0; ox < p->out_w; ox++) {
            const int32_t ix0 = ox * p->stride_w - p->pad_l;
            int32_t kx0, kx1;
            tap_range(ix0, p->dil_w, p->kw, p->in_w, &kx0, &kx1);
            int32_t acc = p->bias[c];
            for (int32_t ky = ky0; ky < ky1; ky++) {
                const int32_t iy = iy0 + ky * p->dil_h;
                for (int32_t kx = kx0; kx < kx1; kx++) {
                    const int32_t ix = ix0 + kx * p->dil_w;
                    acc += (in[((size_t)iy * p->in_w + ix) * ch + c] - p->in_zp) *
                           p->weights[((size_t)ky * p->kw + kx) * ch + c];
                }
            }
            out[((size_t)oy * p->out_w + ox) * ch + c] =
                es_rq(acc, p->mult[c], p->out_zp, p->act_min, p->act_max);
        }
    }
}

#if defined(ES_USE_DSP)

/* Taps per channel group kept widened on the stack; larger kernels take the scalar path. */
#define ES_DW_MAX_TAPS 64

ES_INLINE void mac4(const int8_t *x, const int32_t *w, int32_t off, int32_t a[4]) {
    const int32_t v = es_read32(x);
    const int32_t x02 = es_sxtab16(off, v), x13 = es_sxtab16_ror8(off, v);
    a[0] = es_smlabb(x02, w[0], a[0]);
    a[2] = es_smlatt(x02, w[0], a[2]);
    a[1] = es_smlabb(x13, w[1], a[1]);
    a[3] = es_smlatt(x13, w[1], a[3]);
}

static void dw_group4(const es_conv_t *p, const int8_t *in, int8_t *out, int32_t c) {
    const int32_t ch = p->in_c, kw = p->kw, taps = (int32_t)p->kh * p->kw;
    const int32_t off = (int32_t)((uint32_t)(uint16_t)(-p->in_zp) * 0x10001u);
    const int32_t row = (int32_t)p->in_w * ch, dx = p->dil_w * ch, dy = p->dil_h * row;
    int32_t wv[ES_DW_MAX_TAPS][2]; /* per tap: (w0,w2), (w1,w3) */
    for (int32_t t = 0; t < taps; t++) {
        const int32_t w = es_read32(p->weights + (size_t)t * ch + c);
        wv[t][0] = es_sxtb16(w);
        wv[t][1] = es_sxtb16_ror8(w);
    }
    const int32_t b0 = p->bias[c], b1 = p->bias[c + 1], b2 = p->bias[c + 2], b3 = p->bias[c + 3];
    const float m0 = p->mult[c], m1 = p->mult[c + 1], m2 = p->mult[c + 2], m3 = p->mult[c + 3];
    const int32_t zp = p->out_zp, lo = p->act_min, hi = p->act_max;
    const int fast3x3 = p->kh == 3 && p->kw == 3;
    int8_t *o = out + c;
    for (int32_t oy = 0; oy < p->out_h; oy++) {
        const int32_t iy0 = oy * p->stride_h - p->pad_t;
        int32_t ky0, ky1;
        tap_range(iy0, p->dil_h, p->kh, p->in_h, &ky0, &ky1);
        for (int32_t ox = 0; ox < p->out_w; ox++, o += ch) {
            const int32_t ix0 = ox * p->stride_w - p->pad_l;
            int32_t kx0, kx1;
            tap_range(ix0, p->dil_w, kw, p->in_w, &kx0, &kx1);
            int32_t a[4] = {b0, b1, b2, b3};
            const int8_t *x = in + (iy0 * p->in_w + ix0) * ch + c;
            if (fast3x3 && ky0 == 0 && ky1 == 3 && kx0 == 0 && kx1 == 3) {
                /* interior pixel: all nine taps, unrolled */
                mac4(x, wv[0], off, a);
                mac4(x + dx, wv[1], off, a);
                mac4(x + 2 * dx, wv[2], off, a);
                x += dy;
                mac4(x, wv[3], off, a);
                mac4(x + dx, wv[4], off, a);
                mac4(x + 2 * dx, wv[5], off, a);
                x += dy;
                mac4(x, wv[6], off, a);
                mac4(x + dx, wv[7], off, a);
                mac4(x + 2 * dx, wv[8], off, a);
            } else {
                for (int32_t ky = ky0; ky < ky1; ky++) {
                    for (int32_t kx = kx0; kx < kx1; kx++) {
                        mac4(x + ky * dy + kx * dx, wv[ky * kw + kx], off, a);
                    }
                }
            }
            o[0] = es_rq(a[0], m0, zp, lo, hi);
            o[1] = es_rq(a[1], m1, zp, lo, hi);
            o[2] = es_rq(a[2], m2, zp, lo, hi);
            o[3] = es_rq(a[3], m3, zp, lo, hi);
        }
    }
}

#endif

void es_dwconv2d(const es_conv_t *p, const int8_t *in, int8_t *out, void *scratch) {
    (void)scratch;
    int32_t c = 0;
#if defined(ES_USE_DSP)
    if ((int32_t)p->kh * p->kw <= ES_DW_MAX_TAPS) {
        for (; c + 4 <= p->in_c; c += 4) dw_group4(p, in, out, c);
    }
#endif
    for (; c < p->in_c; c++) dw_channel(p, in, out, c);
}
