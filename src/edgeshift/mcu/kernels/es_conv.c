/* es_conv2d: im2col of two output pixels into scratch, then a GEMM blocked 2 output channels
 * x 2 pixels (each weight load feeds two pixels, each input load two channels).
 *
 * DSP: the columns are widened to int16 as (x - in_zp), and each group of 4 is stored in the
 * order SXTB16 yields from a weight word, [x0 x2 x1 x3], so int8 weights need no repacking:
 * one LDR + two SXTB16 give (w0,w2), (w1,w3) for SMLAD against the column's two words.
 * Helium: the columns stay int8 (padding = in_zp), VMLADAVA over 16 lanes, and the zero
 * point is folded into per-channel biases once per call: bias - in_zp * sum(w). */
#include "es_conv.h"

#include "es_acle.h"

typedef struct {
    const int8_t *w;
    const int32_t *bias;
    const float *mult;
    int32_t k, n, zp, lo, hi;
} es_gemm_t;

#if defined(ES_USE_MVE)

static void im2col8(const es_conv_t *p, const int8_t *in, int32_t oy, int32_t ox, int8_t *col) {
    const int32_t c = p->in_c;
    for (int32_t ky = 0; ky < p->kh; ky++) {
        const int32_t iy = oy * p->stride_h - p->pad_t + ky * p->dil_h;
        for (int32_t kx = 0; kx < p->kw; kx++) {
            const int32_t ix = ox * p->stride_w - p->pad_l + kx * p->dil_w;
            if (iy < 0 || iy >= p->in_h || ix < 0 || ix >= p->in_w) {
                memset(col, (int8_t)p->in_zp, (size_t)c); /* (x - zp) = 0 once folded */
            } else {
                memcpy(col, in + ((size_t)iy * p->in_w + ix) * c, (size_t)c);
            }
            col += c;
        }
    }
}

static void fold_bias(const es_gemm_t *g, int32_t in_zp, int32_t *bias_eff) {
    for (int32_t c = 0; c < g->n; c++) {
        const int8_t *w = g->w + (size_t)c * g->k;
        int32_t s = 0;
        for (int32_t k = 0; k < g->k; k += 16) {
            s = vaddvaq_s8(s, vldrbq_z_s8(w + k, vctp8q((uint32_t)(g->k - k))));
        }
        bias_eff[c] = g->bias[c] - in_zp * s;
    }
}

static void gemm8(const es_gemm_t *g, const int32_t *bias, const int8_t *xa, const int8_t *xb,
                  int8_t *oa, int8_t *ob) {
    const int32_t kk = g->k;
    int32_t c = 0;
    for (; c + 2 <= g->n; c += 2) {
        const int8_t *w0 = g->w + (size_t)c * kk, *w1 = w0 + kk;
        int32_t a00 = bias[c], a01 = a00, a10 = bias[c + 1], a11 = a10;
        for (int32_t k = 0; k < kk; k += 16) {
            const mve_pred16_t pr = vctp8q((uint32_t)(kk - k));
            const int8x16_t va = vldrbq_z_s8(xa + k, pr), vb = vldrbq_z_s8(xb + k, pr);
            const int8x16_t v0 = vldrbq_z_s8(w0 + k, pr), v1 = vldrbq_z_s8(w1 + k, pr);
            a00 = vmladavaq_s8(a00, va, v0);
            a01 = vmladavaq_s8(a01, vb, v0);
            a10 = vmladavaq_s8(a10, va, v1);
            a11 = vmladavaq_s8(a11, vb, v1);
        }
        oa[c] = es_rq(a00, g->mult[c], g->zp, g->lo, g->hi);
        oa[c + 1] = es_rq(a10, g->mult[c + 1], g->zp, g->lo, g->hi);
        if (ob) {
            ob[c] = es_rq(a01, g->mult[c], g->zp, g->lo, g->hi);
            ob[c + 1] = es_rq(a11, g->mult[c + 1], g->zp, g->lo, g->hi);
        }
    }
    if (c < g->n) {
        const int8_t *w0 = g->w + (size_t)c * kk;
        int32_t a00 = bias[c], a01 = a00;
        for (int32_t k = 0; k < kk; k += 16) {
            const mve_pred16_t pr = vctp8q((uint32_t)(kk - k));
            const int8x16_t v0 = vldrbq_z_s8(w0 + k, pr);
            a00 = vmladavaq_s8(a00, vldrbq_z_s8(xa + k, pr), v0);
            a01 = vmladavaq_s8(a01, vldrbq_z_s8(xb + k, pr), v0);
        }
        oa[c] = es_rq(a00, g->mult[c], g->zp, g->lo, g->hi);
        if (ob) ob[c] = es_rq(a01, g->mult[c], g->zp, g->lo, g->hi);
    }
}

#else /* DSP and portable: int16 columns */

static void widen(const int8_t *src, int32_t n, int32_t zp, int16_t *dst) {
#if defined(ES_USE_DSP)
    /* (-zp, -zp) in two int16 lanes: SXTAB16 adds it while sign-extending */
    const int32_t off = (int32_t)((uint32_t)(uint16_t)(-zp) * 0x10001u);
    for (int32_t i = n >> 2; i > 0; i--) {
        const int32_t x = es_read32(src);
        src += 4;
        es_write32(dst, es_sxtab16(off, x));
        es_write32(dst + 2, es_sxtab16_ror8(off, x));
        dst += 4;
    }
    n &= 3;
#endif
    for (int32_t i = 0; i < n; i++) dst[i] = (int16_t)(src[i] - zp);
}

static void im2col16(const es_conv_t *p, const int8_t *in, int32_t oy, int32_t ox,
                     int16_t *col) {
    const int32_t c = p->in_c;
    int16_t *dst = col;
    for (int32_t ky = 0; ky < p->kh; ky++) {
        const int32_t iy = oy * p->stride_h - p->pad_t + ky * p->dil_h;
        for (int32_t kx = 0; kx < p->kw; kx++) {
            const int32_t ix = ox * p->stride_w - p->pad_l + kx * p->dil_w;
            if (iy < 0 || iy >= p->in_h || ix < 0 || ix >= p->in_w) {
                memset(dst, 0, (size_t)c * 2);
            } else {
                const int8_t *src = in + ((size_t)iy * p->in_w + ix) * c;
#if defined(ES_USE_DSP)
                if (c & 3) { /* taps straddle groups of 4: widen now, reorder below */
                    for (int32_t i = 0; i < c; i++) dst[i] = (int16_t)(src[i] - p->in_zp);
                } else {
                    widen(src, c, p->in_zp, dst);
                }
#else
                widen(src, c, p->in_zp, dst);
#endif
            }
            dst += c;
        }
    }
#if defined(ES_USE_DSP)
    if (c & 3) {
        const int32_t k4 = (int32_t)p->kh * p->kw * c / 4;
        for (int32_t i = 0; i < k4; i++) {
            const int16_t t = col[4 * i + 1];
            col[4 * i + 1] = col[4 * i + 2];
            col[4 * i + 2] = t;
        }
    }
#endif
}

/* Two channels (w0, w1) x two pixels (xa, xb): a[channel][pixel] += w . x */
ES_INLINE void dot_2x2(const int8_t *w0, const int8_t *w1, const int16_t *xa, const int16_t *xb,
                       int32_t kk, int32_t a[2][2]) {
    int32_t a00 = a[0][0], a01 = a[0][1], a10 = a[1][0], a11 = a[1][1];
#if defined(ES_USE_DSP)
    for (int32_t i = kk >> 2; i > 0; i--) {
        const int32_t wa = es_read32(w0), wb = es_read32(w1);
        w0 += 4;
        w1 += 4;
        const int32_t wa02 = es_sxtb16(wa), wa13 = es_sxtb16_ror8(wa);
        const int32_t wb02 = es_sxtb16(wb), wb13 = es_sxtb16_ror8(wb);
        int32_t x02 = es_read32(xa), x13 = es_read32(xa + 2);
        xa += 4;
        a00 = es_smlad(wa02, x02, a00);
        a00 = es_smlad(wa13, x13, a00);
        a10 = es_smlad(wb02, x02, a10);
        a10 = es_smlad(wb13, x13, a10);
        x02 = es_read32(xb);
        x13 = es_read32(xb + 2);
        xb += 4;
        a01 = es_smlad(wa02, x02, a01);
        a01 = es_smlad(wa13, x13, a01);
        a11 = es_smlad(wb02, x02, a11);
        a11 = es_smlad(wb13, x13, a11);
    }
    kk &= 3;
#endif
    for (int32_t i = 0; i < kk; i++) {
        a00 += w0[i] * xa[i];
        a01 += w0[i] * xb[i];
        a10 += w1[i] * xa[i];
        a11 += w1[i] * xb[i];
    }
    a[0][0] = a00, a[0][1] = a01, a[1][0] = a10, a[1][1] = a11;
}

ES_INLINE void dot_1x2(const int8_t *w0, const int16_t *xa, const int16_t *xb, int32_t kk,
                       int32_t *pa, int32_t *pb) {
    int32_t a0 = *pa, a1 = *pb;
#if defined(ES_USE_DSP)
    for (int32_t i = kk >> 2; i > 0; i--) {
        const int32_t w = es_read32(w0);
        w0 += 4;
        const int32_t w02 = es_sxtb16(w), w13 = es_sxtb16_ror8(w);
        a0 = es_smlad(w02, es_read32(xa), a0);
        a0 = es_smlad(w13, es_read32(xa + 2), a0);
        a1 = es_smlad(w02, es_read32(xb), a1);
        a1 = es_smlad(w13, es_read32(xb + 2), a1);
        xa += 4;
        xb += 4;
    }
    kk &= 3;
#endif
    for (int32_t i = 0; i < kk; i++) {
        a0 += w0[i] * xa[i];
        a1 += w0[i] * xb[i];
    }
    *pa = a0, *pb = a1;
}

/* ob == NULL: one pixel (xb is then xa and its results are dropped). */
static void gemm16(const es_gemm_t *g, const int16_t *xa, const int16_t *xb, int8_t *oa,
                   int8_t *ob) {
    const int32_t kk = g->k;
    int32_t c = 0;
    for (; c + 2 <= g->n; c += 2) {
        const int8_t *w0 = g->w + (size_t)c * kk;
        int32_t a[2][2] = {{g->bias[c], g->bias[c]}, {g->bias[c + 1], g->bias[c + 1]}};
        dot_2x2(w0, w0 + kk, xa, xb, kk, a);
        oa[c] = es_rq(a[0][0], g->mult[c], g->zp, g->lo, g->hi);
        oa[c + 1] = es_rq(a[1][0], g->mult[c + 1], g->zp, g->lo, g->hi);
        if (ob) {
            ob[c] = es_rq(a[0][1], g->mult[c], g->zp, g->lo, g->hi);
            ob[c + 1] = es_rq(a[1][1], g->mult[c + 1], g->zp, g->lo, g->hi);
        }
    }
    if (c < g->n) {
        int32_t a0 = g->bias[c], a1 = a0;
        dot_1x2(g->w + (size_t)c * kk, xa, xb, kk, &a0, &a1);
        oa[c] = es_rq(a0, g->mult[c], g->zp, g->lo, g->hi);
        if (ob) ob[c] = es_rq(a1, g->mult[c], g->zp, g->lo, g->hi);
    }
}

#endif

void es_conv2d(const es_conv_t *p, const int8_t *in, int8_t *out, void *scratch) {
    const int32_t kk = (int32_t)p->kh * p->kw * p->in_c;
    const int32_t n_px = (int32_t)p->out_h * p->out_w;
    const es_gemm_t g = {p->weights, p->bias, p->mult, kk,
                         p->out_c, p->out_zp, p->act_min, p->act_max};
#if defined(ES_USE_MVE)
    int32_t *bias = (int32_t *)scratch;
    int8_t *col_a = (int8_t *)(bias + p->out_c), *col_b = col_a + (kk + 3) / 4 * 4;
    fold_bias(&g, p->in_zp, bias);
#define ES_IM2COL im2col8
#define ES_GEMM(xa, xb, oa, ob) gemm8(&g, bias, xa, xb, oa, ob)
#else
    int16_t *col_a = (int16_t *)scratch, *col_b = col_a + (kk + 1) / 2 * 2;
#define ES_IM2COL im2col16
#define ES_GEMM(xa, xb, oa, ob) gemm16(&g, xa, xb, oa, ob)
#endif
    int32_t oy = 0, ox = 0;
    for (int32_t px = 0; px < n_px; px += 2) {
        ES_IM2COL(p, in, oy, ox, col_a);
        int8_t *oa = out + (size_t)px * p->out_c;
        if (++ox == p->out_w) ox = 0, oy++;
        if (px + 1 < n_px) {
            ES_IM2COL(p, in, oy, ox, col_b);
            if (++ox == p->out_w) ox = 0, oy++;
            ES_GEMM(col_a, col_b, oa, oa + p->out_c);
        } else {
            ES_GEMM(col_a, col_a, oa, NULL);
        }
    }
#undef ES_IM2COL
#undef ES_GEMM
}
