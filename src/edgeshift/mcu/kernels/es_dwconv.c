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

#if defined(__GNUC__) && !defined(__clang__)
/* GCC's first scheduling pass hoists the loads of every tap and spills the accumulators */
#define ES_NOSCHED __attribute__((noinline, optimize("no-schedule-insns")))
#else
#define ES_NOSCHED
#endif

typedef struct {
    int32_t bias[4];
    float mult[4];
    int32_t zp, lo, hi, clamp, off;
} es_dwq_t;

ES_INLINE void mac4(const int8_t *x, const int32_t *w, int32_t off, int32_t *a0, int32_t *a1,
                    int32_t *a2, int32_t *a3) {
    uint64_t wp; /* one LDRD for the tap's two weight words */
    memcpy(&wp, w, 8);
    const int32_t w02 = (int32_t)(uint32_t)wp, w13 = (int32_t)(uint32_t)(wp >> 32);
    const int32_t v = es_read32(x);
    const int32_t x02 = es_sxtab16(off, v), x13 = es_sxtab16_ror8(off, v);
    *a0 = es_smlabb(x02, w02, *a0);
    *a2 = es_smlatt(x02, w02, *a2);
    *a1 = es_smlabb(x13, w13, *a1);
    *a3 = es_smlatt(x13, w13, *a3);
}

/* Q by value: its fields stay in registers across the int8 stores (which may alias a pointer) */
ES_INLINE void store4(const es_dwq_t q, int32_t a0, int32_t a1, int32_t a2, int32_t a3,
                      int8_t *o) {
    o[0] = es_rq_c(a0, q.mult[0], q.zp, q.lo, q.hi, q.clamp);
    o[1] = es_rq_c(a1, q.mult[1], q.zp, q.lo, q.hi, q.clamp);
    o[2] = es_rq_c(a2, q.mult[2], q.zp, q.lo, q.hi, q.clamp);
    o[3] = es_rq_c(a3, q.mult[3], q.zp, q.lo, q.hi, q.clamp);
}

/* one pixel, taps [0, kh) x [0, kw) from x; w steps w_skip pairs past each kernel row */
ES_NOSCHED static void dw_pixel(const es_dwq_t *q, const int32_t *w, int32_t w_skip,
                                const int8_t *x, int32_t kh, int32_t kw, int32_t dx,
                                int32_t dy, int8_t *o) {
    const es_dwq_t ql = *q;
    int32_t a0 = ql.bias[0], a1 = ql.bias[1], a2 = ql.bias[2], a3 = ql.bias[3];
    for (int32_t ky = 0; ky < kh; ky++, x += dy, w += 2 * w_skip) {
        const int8_t *t = x;
        for (int32_t kx = 0; kx < kw; kx++, t += dx, w += 2) mac4(t, w, ql.off, &a0, &a1, &a2, &a3);
    }
    store4(ql, a0, a1, a2, a3, o);
}

/* N interior pixels of one row, kernel width 3 unrolled */
ES_NOSCHED static void dw_run3(const es_dwq_t *q, const int32_t *wv, const int8_t *x,
                               int32_t n, int32_t x_step, int32_t kh, int32_t dx, int32_t dy,
                               int8_t *o, int32_t o_step) {
    const es_dwq_t ql = *q;
    const int32_t off = ql.off;
    for (; n > 0; n--, x += x_step, o += o_step) {
        int32_t a0 = ql.bias[0], a1 = ql.bias[1], a2 = ql.bias[2], a3 = ql.bias[3];
        const int32_t *w = wv;
        const int8_t *r = x;
        for (int32_t ky = kh; ky > 0; ky--, r += dy, w += 6) {
            mac4(r, w, off, &a0, &a1, &a2, &a3);
            mac4(r + dx, w + 2, off, &a0, &a1, &a2, &a3);
            mac4(r + 2 * dx, w + 4, off, &a0, &a1, &a2, &a3);
        }
        store4(ql, a0, a1, a2, a3, o);
    }
}

static void dw_group4(const es_conv_t *p, const int8_t *in, int8_t *out, int32_t c) {
    const int32_t ch = p->in_c, kh = p->kh, kw = p->kw, sw = p->stride_w;
    const int32_t row = (int32_t)p->in_w * ch, dx = p->dil_w * ch, dy = p->dil_h * row;
    int32_t wv[ES_DW_MAX_TAPS][2]; /* per tap: (w0,w2), (w1,w3) */
    for (int32_t t = 0; t < kh * kw; t++) {
        const int32_t w = es_read32(p->weights + (size_t)t * ch + c);
        wv[t][0] = es_sxtb16(w);
        wv[t][1] = es_sxtb16_ror8(w);
    }
    es_dwq_t q;
    for (int32_t i = 0; i < 4; i++) q.bias[i] = p->bias[c + i], q.mult[i] = p->mult[c + i];
    q.zp = p->out_zp, q.lo = p->act_min, q.hi = p->act_max;
    q.clamp = q.lo > -128 || q.hi < 127;
    q.off = (int32_t)((uint32_t)(uint16_t)(-p->in_zp) * 0x10001u);
    /* output columns whose taps all lie inside the input: [ox_lo, ox_hi) */
    const int32_t span_w = (kw - 1) * p->dil_w;
    int32_t ox_lo = (p->pad_l + sw - 1) / sw;
    int32_t ox_hi = p->in_w - 1 - span_w + p->pad_l < 0 ? 0 : (p->in_w - 1 - span_w + p->pad_l) / sw + 1;
    if (ox_hi > p->out_w) ox_hi = p->out_w;
    if (ox_lo > ox_hi) ox_lo = ox_hi;
    for (int32_t oy = 0; oy < p->out_h; oy++) {
        const int32_t iy0 = oy * p->stride_h - p->pad_t;
        int32_t ky0, ky1;
        tap_range(iy0, p->dil_h, kh, p->in_h, &ky0, &ky1);
        int8_t *o = out + (size_t)oy * p->out_w * ch + c;
        const int8_t *x = in + (iy0 + ky0 * p->dil_h) * row + c;
        int32_t ox = 0;
        if (kw == 3 && ox_lo < ox_hi) {
            for (; ox < ox_lo; ox++) {
                const int32_t ix0 = ox * sw - p->pad_l;
                int32_t kx0, kx1;
                tap_range(ix0, p->dil_w, kw, p->in_w, &kx0, &kx1);
                dw_pixel(&q, wv[ky0 * kw + kx0], kw - (kx1 - kx0), x + (ix0 + kx0 * p->dil_w) * ch,
                         ky1 - ky0, kx1 - kx0, dx, dy, o + ox * ch);
            }
            dw_run3(&q, wv[ky0 * kw], x + (ox_lo * sw - p->pad_l) * ch, ox_hi - ox_lo, sw * ch,
                    ky1 - ky0, dx, dy, o + ox_lo * ch, ch);
            ox = ox_hi;
        }
        for (; ox < p->out_w; ox++) {
            const int32_t ix0 = ox * sw - p->pad_l;
            int32_t kx0, kx1;
            tap_range(ix0, p->dil_w, kw, p->in_w, &kx0, &kx1);
            dw_pixel(&q, wv[ky0 * kw + kx0], kw - (kx1 - kx0), x + (ix0 + kx0 * p->dil_w) * ch,
                     ky1 - ky0, kx1 - kx0, dx, dy, o + ox * ch);
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
