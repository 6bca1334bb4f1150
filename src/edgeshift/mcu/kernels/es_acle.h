/* edgeshift MCU kernels: which MAC path is compiled, and the few Arm DSP instructions the
 * DSP path uses. On a core with the DSP extension (__ARM_FEATURE_DSP: Cortex-M4/M7/M33/M55)
 * they are the real instructions; on any other compiler with -DES_FORCE_DSP they are exact C
 * emulations, so the host tests compile and check the DSP algorithm itself.
 *
 *   ES_USE_MVE   Helium (Cortex-M55, needs -mfloat-abi=hard or softfp): conv and fc.
 *   ES_USE_DSP   SIMD-within-a-register (SXTB16 / SMLAD): conv, depthwise, fc.
 *   neither      portable C99.
 * -DES_FORCE_PORTABLE turns both off; -DES_FORCE_DSP turns DSP on (and MVE off). */
#ifndef ES_ACLE_H
#define ES_ACLE_H

#include "es_common.h"

#if !defined(ES_FORCE_PORTABLE)
#if defined(__ARM_FEATURE_MVE) && (__ARM_FEATURE_MVE & 1) && !defined(ES_FORCE_DSP)
#define ES_USE_MVE 1
#include <arm_mve.h>
#endif
#if defined(__ARM_FEATURE_DSP) || defined(ES_FORCE_DSP)
#define ES_USE_DSP 1
#endif
#endif

ES_INLINE int32_t es_read32(const void *p) {
    int32_t v; /* memcpy: Cortex-M4+ loads unaligned words in one LDR */
    memcpy(&v, p, 4);
    return v;
}

ES_INLINE void es_write32(void *p, int32_t v) { memcpy(p, &v, 4); }

#if defined(__ARM_FEATURE_DSP)
#include <arm_acle.h>
ES_INLINE int32_t es_sxtb16(int32_t x) { return (int32_t)__sxtb16((uint32_t)x); }
ES_INLINE int32_t es_sxtb16_ror8(int32_t x) {
    int32_t r; /* asm: GCC does not fold __ror into the instruction's rotate */
    __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(x));
    return r;
}
ES_INLINE int32_t es_sxtab16(int32_t a, int32_t x) {
    return (int32_t)__sxtab16((uint32_t)a, (uint32_t)x);
}
ES_INLINE int32_t es_sxtab16_ror8(int32_t a, int32_t x) {
    int32_t r;
    __asm__("sxtab16 %0, %1, %2, ror #8" : "=r"(r) : "r"(a), "r"(x));
    return r;
}
ES_INLINE int32_t es_smlad(int32_t x, int32_t y, int32_t acc) { return __smlad(x, y, acc); }
ES_INLINE int32_t es_smlabb(int32_t x, int32_t y, int32_t acc) { return __smlabb(x, y, acc); }
ES_INLINE int32_t es_smlatt(int32_t x, int32_t y, int32_t acc) { return __smlatt(x, y, acc); }
ES_INLINE int32_t es_qadd(int32_t a, int32_t b) { return __qadd(a, b); }
#define es_ssat8(x) __ssat((x), 8)
#else
/* Exact emulations: lanes are the low and high 16 bits, arithmetic modulo 2^16 per lane. */
ES_INLINE int32_t es_pack16(int32_t lo, int32_t hi) {
    return (int32_t)(((uint32_t)(uint16_t)lo) | ((uint32_t)(uint16_t)hi << 16));
}
ES_INLINE int32_t es_lo16(int32_t x) { return (int16_t)(uint16_t)((uint32_t)x & 0xFFFFu); }
ES_INLINE int32_t es_hi16(int32_t x) { return (int16_t)(uint16_t)((uint32_t)x >> 16); }
ES_INLINE int32_t es_byte(int32_t x, int n) { return (int8_t)(uint8_t)((uint32_t)x >> (8 * n)); }
ES_INLINE int32_t es_sxtb16(int32_t x) { return es_pack16(es_byte(x, 0), es_byte(x, 2)); }
ES_INLINE int32_t es_sxtb16_ror8(int32_t x) { return es_pack16(es_byte(x, 1), es_byte(x, 3)); }
ES_INLINE int32_t es_sxtab16(int32_t a, int32_t x) {
    return es_pack16(es_lo16(a) + es_byte(x, 0), es_hi16(a) + es_byte(x, 2));
}
ES_INLINE int32_t es_sxtab16_ror8(int32_t a, int32_t x) {
    return es_pack16(es_lo16(a) + es_byte(x, 1), es_hi16(a) + es_byte(x, 3));
}
ES_INLINE int32_t es_smlad(int32_t x, int32_t y, int32_t acc) {
    return (int32_t)((uint32_t)acc + (uint32_t)(es_lo16(x) * es_lo16(y)) +
                     (uint32_t)(es_hi16(x) * es_hi16(y)));
}
ES_INLINE int32_t es_smlabb(int32_t x, int32_t y, int32_t acc) {
    return acc + es_lo16(x) * es_lo16(y);
}
ES_INLINE int32_t es_smlatt(int32_t x, int32_t y, int32_t acc) {
    return acc + es_hi16(x) * es_hi16(y);
}
ES_INLINE int32_t es_qadd(int32_t a, int32_t b) {
    int64_t s = (int64_t)a + b;
    return s > INT32_MAX ? INT32_MAX : s < INT32_MIN ? INT32_MIN : (int32_t)s;
}
ES_INLINE int32_t es_ssat8(int32_t x) { return x > 127 ? 127 : x < -128 ? -128 : x; }
#endif

/* float -> int32, round half to even, saturating: VCVTR under the default FPSCR mode (round to
 * nearest even). Rounding and then clamping to the integer bounds equals the contract's
 * clamp-then-round, because rounding is monotone and the bounds are integers. */
#if defined(__ARM_FP) && (__ARM_FP & 4) && defined(__thumb2__)
ES_INLINE int32_t es_cvt_rne(float f) {
    float r;
    int32_t i;
    __asm__("vcvtr.s32.f32 %0, %1" : "=t"(r) : "t"(f));
    memcpy(&i, &r, 4);
    return i;
}
#else
ES_INLINE int32_t es_cvt_rne(float f) {
    if (f >= 2147483648.0f) return INT32_MAX;
    if (f <= -2147483648.0f) return INT32_MIN;
    if (f != f) return 0;
    /* |f| >= 2^23 is already an integer; below it the magic-number trick rounds to even */
    if (f >= 8388608.0f || f <= -8388608.0f) return (int32_t)f;
    return es_round_half_even(f);
}
#endif

/* The contract (es_requant) in integers after one rounding conversion: cheaper than two float
 * compares on cores whose FPU has no VMAX. */
ES_INLINE int8_t es_requant_i(int32_t acc, float mult, int32_t zp, int32_t lo, int32_t hi) {
    int32_t y = es_qadd(es_cvt_rne((float)acc * mult), zp);
    y = y < lo ? lo : y;
    return (int8_t)(y > hi ? hi : y);
}

/* The requantization each path uses: the contract itself on portable builds. */
ES_INLINE int8_t es_rq(int32_t acc, float mult, int32_t zp, int32_t act_min, int32_t act_max) {
#if defined(ES_USE_DSP) || defined(ES_USE_MVE)
    return es_requant_i(acc, mult, zp, act_min, act_max);
#else
    return es_requant(acc, mult, zp, (float)(act_min - zp), (float)(act_max - zp));
#endif
}

#if defined(__GNUC__)
#define ES_UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define ES_UNLIKELY(x) (x)
#endif

/* es_rq for the hot loops: CLAMP = (lo > -128 || hi < 127) is computed once per call, since
 * most layers (ReLU into zero point -128, ReLU6 spanning the scale) need only saturation. */
ES_INLINE int8_t es_rq_c(int32_t acc, float mult, int32_t zp, int32_t lo, int32_t hi,
                         int32_t clamp) {
#if defined(ES_USE_DSP) || defined(ES_USE_MVE)
    int32_t y = es_ssat8(es_qadd(es_cvt_rne((float)acc * mult), zp));
    if (ES_UNLIKELY(clamp)) {
        y = y < lo ? lo : y;
        y = y > hi ? hi : y;
    }
    return (int8_t)y;
#else
    (void)clamp;
    return es_rq(acc, mult, zp, lo, hi);
#endif
}

#endif
