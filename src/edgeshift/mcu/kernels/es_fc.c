/* es_fc: the input is copied to scratch first (so out may equal in), then two weight rows
 * at a time. DSP: the input is widened once to int16 (x - in_zp) in SXTB16's order
 * [x0 x2 x1 x3], so each weight word needs only LDR + two SXTB16 before two SMLADs.
 * Helium: the input stays int8; sum(w) rides along (VADDVA) to fold the zero point. */
#include "es_acle.h"
#include "es_conv.h"

#if defined(ES_USE_MVE)

void es_fc(const es_fc_t *p, const int8_t *in, int8_t *out, void *scratch) {
    const int32_t kk = p->in_n, in_zp = p->in_zp, zp = p->out_zp;
    const int32_t lo = p->act_min, hi = p->act_max, clamp = lo > -128 || hi < 127;
    int8_t *x = (int8_t *)scratch;
    memcpy(x, in, (size_t)kk);
    int32_t c = 0;
    for (; c < p->out_n; c += 2) {
        const int8_t *w0 = p->weights + (size_t)c * kk;
        /* an odd last row pairs with itself; only its first result is stored */
        const int8_t *w1 = c + 1 < p->out_n ? w0 + kk : w0;
        int32_t a0 = 0, a1 = 0, s0 = 0, s1 = 0;
        for (int32_t k = 0; k < kk; k += 16) {
            const mve_pred16_t pr = vctp8q((uint32_t)(kk - k));
            const int8x16_t vx = vldrbq_z_s8(x + k, pr);
            const int8x16_t v0 = vldrbq_z_s8(w0 + k, pr), v1 = vldrbq_z_s8(w1 + k, pr);
            a0 = vmladavaq_s8(a0, vx, v0);
            a1 = vmladavaq_s8(a1, vx, v1);
            s0 = vaddvaq_s8(s0, v0);
            s1 = vaddvaq_s8(s1, v1);
        }
        out[c] = es_rq_c(p->bias[c] + a0 - in_zp * s0, p->mult[c], zp, lo, hi, clamp);
        if (c + 1 < p->out_n) {
            out[c + 1] =
                es_rq_c(p->bias[c + 1] + a1 - in_zp * s1, p->mult[c + 1], zp, lo, hi, clamp);
        }
    }
}

#else

/* Two weight rows against the widened input. GCC's first scheduling pass would hoist every
 * load of the loop and spill (see gemm_pair in es_conv.c). */
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((noinline, optimize("no-schedule-insns")))
#endif
static void fc_rows(const es_fc_t *p, const int16_t *x, int8_t *restrict out) {
    const int32_t kk = p->in_n, zp = p->out_zp;
    const int32_t lo = p->act_min, hi = p->act_max, clamp = lo > -128 || hi < 127;
    const int32_t *bias = p->bias;
    const float *mult = p->mult;
    for (int32_t c = 0; c < p->out_n; c += 2) {
        const int8_t *w0 = p->weights + (size_t)c * kk;
        const int8_t *w1 = c + 1 < p->out_n ? w0 + kk : w0; /* an odd last row pairs with itself */
        const int16_t *xp = x;
        int32_t a0 = bias[c], a1 = c + 1 < p->out_n ? bias[c + 1] : 0, k = kk;
#if defined(ES_USE_DSP)
        for (int32_t i = kk >> 2; i > 0; i--) {
            const int32_t u = es_read32(w0), v = es_read32(w1);
            w0 += 4;
            w1 += 4;
            const int32_t u02 = es_sxtb16(u), u13 = es_sxtb16_ror8(u);
            const int32_t v02 = es_sxtb16(v), v13 = es_sxtb16_ror8(v);
            int32_t t = es_read32(xp);
            a0 = es_smlad(u02, t, a0);
            a1 = es_smlad(v02, t, a1);
            t = es_read32(xp + 2);
            a0 = es_smlad(u13, t, a0);
            a1 = es_smlad(v13, t, a1);
            xp += 4;
        }
        k &= 3;
#endif
        for (int32_t i = 0; i < k; i++) {
            a0 += w0[i] * xp[i];
            a1 += w1[i] * xp[i];
        }
        out[c] = es_rq_c(a0, mult[c], zp, lo, hi, clamp);
        if (c + 1 < p->out_n) out[c + 1] = es_rq_c(a1, mult[c + 1], zp, lo, hi, clamp);
    }
}

void es_fc(const es_fc_t *p, const int8_t *in, int8_t *out, void *scratch) {
    const int32_t kk = p->in_n;
    int16_t *x = (int16_t *)scratch;
#if defined(ES_USE_DSP)
    const int32_t off = (int32_t)((uint32_t)(uint16_t)(-p->in_zp) * 0x10001u);
    for (int32_t i = 0; i < kk >> 2; i++) {
        const int32_t v = es_read32(in + 4 * i);
        es_write32(x + 4 * i, es_sxtab16(off, v));
        es_write32(x + 4 * i + 2, es_sxtab16_ror8(off, v));
    }
    for (int32_t i = kk & ~3; i < kk; i++) x[i] = (int16_t)(in[i] - p->in_zp);
#else
    for (int32_t i = 0; i < kk; i++) x[i] = (int16_t)(in[i] - p->in_zp);
#endif
    fc_rows(p, x, out);
}

#endif
