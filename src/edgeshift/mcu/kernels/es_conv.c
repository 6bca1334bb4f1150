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
                  int8_t *restrict oa, int8_t *restrict ob) {
    const int32_t zp = g->zp, lo = g->lo, hi = g->hi, clamp = lo > -128 || hi < 127;
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
        oa[c] = es_rq_c(a00, g->mult[c], zp, lo, hi, clamp);
        oa[c + 1] = es_rq_c(a10, g->mult[c + 1], zp, lo, hi, clamp);
        if (ob) {
            ob[c] = es_rq_c(a01, g->mult[c], zp, lo, hi, clamp);
            ob[c + 1] = es_rq_c(a11, g->mult[c + 1], zp, lo, hi, clamp);
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
        oa[c] = es_rq_c(a00, g->mult[c], zp, lo, hi, clamp);
        if (ob) ob[c] = es_rq_c(a01, g->mult[c], zp, lo, hi, clamp);
    }
}

#elif defined(ES_USE_DSP)

/* Two pixels' columns interleaved by groups of 4: [A0 A2 A1 A3][B0 B2 B1 B3][A4 ...], so one
 * pointer with immediate offsets feeds the 2x2 block (a free register keeps the loop unspilled);
 * the K % 4 tail follows, A's then B's, in natural order. */
static void widen_pair(const int8_t *src, int32_t n, int32_t off, int16_t *dst) {
    for (int32_t i = n >> 2; i > 0; i--) {
        const int32_t x = es_read32(src);
        src += 4;
        es_write32(dst, es_sxtab16(off, x));
        es_write32(dst + 2, es_sxtab16_ror8(off, x));
        dst += 8;
    }
}

static void im2col_pair(const es_conv_t *p, const int8_t *in, int32_t oy, int32_t ox,
                        int32_t which, int16_t *pair, int16_t *tmp) {
    const int32_t c = p->in_c, kk = (int32_t)p->kh * p->kw * c, k4 = kk >> 2;
    const int32_t off = (int32_t)((uint32_t)(uint16_t)(-p->in_zp) * 0x10001u);
    const int32_t ix0 = ox * p->stride_w - p->pad_l, span = (p->kw - 1) * p->dil_w;
    const int row_inside = ix0 >= 0 && ix0 + span < p->in_w && p->dil_w == 1;
    if ((c & 3) == 0) { /* every tap starts a group of 4: widen straight into place */
        int16_t *dst = pair + 4 * which;
        for (int32_t ky = 0; ky < p->kh; ky++) {
            const int32_t iy = oy * p->stride_h - p->pad_t + ky * p->dil_h;
            for (int32_t kx = 0; kx < p->kw; kx++, dst += 2 * c) {
                const int32_t ix = ix0 + kx * p->dil_w;
                if (iy >= 0 && iy < p->in_h && ix >= 0 && ix < p->in_w) {
                    widen_pair(in + ((size_t)iy * p->in_w + ix) * c, c, off, dst);
                } else {
                    for (int32_t i = 0; i < c; i += 4) {
                        es_write32(dst + 2 * i, 0);
                        es_write32(dst + 2 * i + 2, 0);
                    }
                }
            }
        }
        return;
    }
    /* taps straddle groups of 4 (in_c 1, 3, ...): gather the raw int8 column (padding = in_zp,
     * which widens to 0), then widen it whole */
    int8_t *col = (int8_t *)tmp;
    for (int32_t ky = 0; ky < p->kh; ky++) {
        const int32_t iy = oy * p->stride_h - p->pad_t + ky * p->dil_h;
        const int y_inside = iy >= 0 && iy < p->in_h;
        if (y_inside && row_inside) {
            memcpy(col, in + ((size_t)iy * p->in_w + ix0) * c, (size_t)(p->kw * c));
            col += p->kw * c;
            continue;
        }
        for (int32_t kx = 0; kx < p->kw; kx++, col += c) {
            const int32_t ix = ix0 + kx * p->dil_w;
            if (y_inside && ix >= 0 && ix < p->in_w) {
                memcpy(col, in + ((size_t)iy * p->in_w + ix) * c, (size_t)c);
            } else {
                memset(col, (int8_t)p->in_zp, (size_t)c);
            }
        }
    }
    col = (int8_t *)tmp;
    widen_pair(col, 4 * k4, off, pair + 4 * which);
    int16_t *d = pair + 8 * k4 + which * (kk & 3);
    for (int32_t i = 4 * k4; i < kk; i++) *d++ = (int16_t)(col[i] - p->in_zp);
}

/* all output channels of two pixels from their interleaved columns. GCC's first scheduling
 * pass would hoist all six loads and spill a pointer (measured: 23 -> 21 instructions per
 * 16 MACs on Cortex-M4 without it). */
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((noinline, optimize("no-schedule-insns")))
#endif
static void gemm_pair(const es_gemm_t *g, const int16_t *pair, int8_t *restrict oa,
                      int8_t *restrict ob) {
    const int32_t kk = g->k, k4 = kk >> 2, tail = kk & 3, n = g->n;
    const int32_t zp = g->zp, lo = g->lo, hi = g->hi, clamp = lo > -128 || hi < 127;
    const int32_t *bias = g->bias;
    const float *mult = g->mult;
    const int8_t *w0 = g->w;
    const int16_t *xt = pair + 8 * k4;
    int32_t c = 0;
    for (; c + 2 <= n; c += 2, w0 += 2 * kk) {
        const int8_t *wa = w0, *wb = w0 + kk;
        const int16_t *x = pair;
        int32_t a00 = bias[c], a01 = a00, a10 = bias[c + 1], a11 = a10;
        for (int32_t i = k4; i > 0; i--) {
            /* weights first, then one column word at a time: 13 live registers, no spills */
            const int32_t u = es_read32(wa), v = es_read32(wb);
            wa += 4;
            wb += 4;
            const int32_t u02 = es_sxtb16(u), u13 = es_sxtb16_ror8(u);
            const int32_t v02 = es_sxtb16(v), v13 = es_sxtb16_ror8(v);
            int32_t t = es_read32(x);
            a00 = es_smlad(u02, t, a00);
            a10 = es_smlad(v02, t, a10);
            t = es_read32(x + 2);
            a00 = es_smlad(u13, t, a00);
            a10 = es_smlad(v13, t, a10);
            t = es_read32(x + 4);
            a01 = es_smlad(u02, t, a01);
            a11 = es_smlad(v02, t, a11);
            t = es_read32(x + 6);
            a01 = es_smlad(u13, t, a01);
            a11 = es_smlad(v13, t, a11);
            x += 8;
        }
        for (int32_t i = 0; i < tail; i++) {
            a00 += wa[i] * xt[i];
            a01 += wa[i] * xt[tail + i];
            a10 += wb[i] * xt[i];
            a11 += wb[i] * xt[tail + i];
        }
        oa[c] = es_rq_c(a00, mult[c], zp, lo, hi, clamp);
        oa[c + 1] = es_rq_c(a10, mult[c + 1], zp, lo, hi, clamp);
        if (ob) {
            ob[c] = es_rq_c(a01, mult[c], zp, lo, hi, clamp);
            ob[c + 1] = es_rq_c(a11, mult[c + 1], zp, lo, hi, clamp);
        }
    }
    if (c < n) {
        const int8_t *wa = w0;
        const int16_t *x = pair;
        int32_t a00 = bias[c], a01 = a00;
        for (int32_t i = k4; i > 0; i--) {
            const int32_t w = es_read32(wa);
            wa += 4;
            const int32_t w02 = es_sxtb16(w), w13 = es_sxtb16_ror8(w);
            a00 = es_smlad(w02, es_read32(x), a00);
            a00 = es_smlad(w13, es_read32(x + 2), a00);
            a01 = es_smlad(w02, es_read32(x + 4), a01);
            a01 = es_smlad(w13, es_read32(x + 6), a01);
            x += 8;
        }
        for (int32_t i = 0; i < tail; i++) {
            a00 += wa[i] * xt[i];
            a01 += wa[i] * xt[tail + i];
        }
        oa[c] = es_rq_c(a00, mult[c], zp, lo, hi, clamp);
        if (ob) ob[c] = es_rq_c(a01, mult[c], zp, lo, hi, clamp);
    }
}

#else /* portable: two int16 columns in natural order */

static void im2col16(const es_conv_t *p, const int8_t *in, int32_t oy, int32_t ox,
                     int16_t *col) {
    const int32_t c = p->in_c;
    for (int32_t ky = 0; ky < p->kh; ky++) {
        const int32_t iy = oy * p->stride_h - p->pad_t + ky * p->dil_h;
        for (int32_t kx = 0; kx < p->kw; kx++) {
            const int32_t ix = ox * p->stride_w - p->pad_l + kx * p->dil_w;
            const int inside = iy >= 0 && iy < p->in_h && ix >= 0 && ix < p->in_w;
            const int8_t *src = in + ((size_t)iy * p->in_w + ix) * c;
            for (int32_t i = 0; i < c; i++) col[i] = inside ? (int16_t)(src[i] - p->in_zp) : 0;
            col += c;
        }
    }
}

/* ob == NULL: one pixel (xb is then xa and its results are dropped). */
static void gemm16(const es_gemm_t *g, const int16_t *xa, const int16_t *xb, int8_t *oa,
                   int8_t *ob) {
    const int32_t zp = g->zp, lo = g->lo, hi = g->hi, clamp = lo > -128 || hi < 127;
    const int32_t kk = g->k;
    for (int32_t c = 0; c < g->n; c++) {
        const int8_t *w = g->w + (size_t)c * kk;
        int32_t a0 = g->bias[c], a1 = a0;
        for (int32_t i = 0; i < kk; i++) {
            a0 += w[i] * xa[i];
            a1 += w[i] * xb[i];
        }
        oa[c] = es_rq_c(a0, g->mult[c], zp, lo, hi, clamp);
        if (ob) ob[c] = es_rq_c(a1, g->mult[c], zp, lo, hi, clamp);
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
    int32_t oy = 0, ox = 0;
    for (int32_t px = 0; px < n_px; px += 2) {
        int8_t *oa = out + (size_t)px * p->out_c, *ob = px + 1 < n_px ? oa + p->out_c : NULL;
        const int32_t ay = oy, ax = ox;
        if (++ox == p->out_w) ox = 0, oy++;
        if (!ob) oy = ay, ox = ax; /* odd last pixel: its column twice, one result kept */
        im2col8(p, in, ay, ax, col_a);
        im2col8(p, in, oy, ox, col_b);
        gemm8(&g, bias, col_a, col_b, oa, ob);
        if (++ox == p->out_w) ox = 0, oy++;
    }
#elif defined(ES_USE_DSP)
    int16_t *pair = (int16_t *)scratch, *tmp = pair + 2 * ((kk + 1) / 2 * 2);
    int32_t oy = 0, ox = 0;
    for (int32_t px = 0; px < n_px; px += 2) {
        int8_t *oa = out + (size_t)px * p->out_c, *ob = px + 1 < n_px ? oa + p->out_c : NULL;
        const int32_t ay = oy, ax = ox;
        if (++ox == p->out_w) ox = 0, oy++;
        if (!ob) oy = ay, ox = ax;
        im2col_pair(p, in, ay, ax, 0, pair, tmp);
        im2col_pair(p, in, oy, ox, 1, pair, tmp);
        gemm_pair(&g, pair, oa, ob);
        if (++ox == p->out_w) ox = 0, oy++;
    }
#else
    int16_t *col_a = (int16_t *)scratch, *col_b = col_a + (kk + 1) / 2 * 2;
    int32_t oy = 0, ox = 0;
    for (int32_t px = 0; px < n_px; px += 2) {
        int8_t *oa = out + (size_t)px * p->out_c, *ob = px + 1 < n_px ? oa + p->out_c : NULL;
        const int32_t ay = oy, ax = ox;
        if (++ox == p->out_w) ox = 0, oy++;
        if (!ob) oy = ay, ox = ax;
        im2col16(p, in, ay, ax, col_a);
        im2col16(p, in, oy, ox, col_b);
        gemm16(&g, col_a, col_b, oa, ob);
        if (++ox == p->out_w) ox = 0, oy++;
    }
#endif
}
