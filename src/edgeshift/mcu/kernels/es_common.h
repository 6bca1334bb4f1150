/* edgeshift MCU kernels: shared definitions. Portable C99; the Cortex-M paths add ACLE DSP
 * intrinsics (__ARM_FEATURE_DSP) or Helium (__ARM_FEATURE_MVE). Generated model code calls
 * the kernels with parameters that live in flash (const structs).
 *
 * Requantization contract (ONNX Runtime's QLinear kernels, MLAS MlasRequantizeOutput):
 *     f = (float)acc * mult;  f = clamp(f, act_min - zp, act_max - zp);
 *     y = round_half_to_even(f) + zp
 * round_half_to_even uses the magic-number trick MLAS uses: exact for |f| < 2^22, which the
 * clamp guarantees. */
#ifndef ES_COMMON_H
#define ES_COMMON_H

#include <stdint.h>
#include <string.h>

#if defined(__GNUC__)
#define ES_INLINE static inline __attribute__((always_inline))
#else
#define ES_INLINE static inline
#endif

ES_INLINE int32_t es_round_half_even(float f) {
    union { float f; int32_t i; } u;
    u.f = f + 12582912.0f; /* 1.5 * 2^23: the sum's low mantissa bits are rint(f) */
    return u.i - 0x4B400000;
}

ES_INLINE int8_t es_requant(int32_t acc, float mult, int32_t zp, float lo, float hi) {
    float f = (float)acc * mult;
    f = f < lo ? lo : f;
    f = f > hi ? hi : f;
    return (int8_t)(es_round_half_even(f) + zp);
}

#endif
