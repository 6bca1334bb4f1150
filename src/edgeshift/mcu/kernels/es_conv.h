/* edgeshift MCU kernels: int8 convolution, depthwise convolution and fully connected.
 *
 * Activations are int8 NHWC with the batch dropped; weights are int8 with zero point 0 and
 * exactly the IR's layouts (no repacking: the DSP path reorders the *input* as it widens it):
 *   es_conv2d    weights OHWI [out_c][kh][kw][in_c]
 *   es_dwconv2d  weights HWC  [kh][kw][c]            (in_c == out_c)
 *   es_fc        weights      [out_n][in_n]
 * bias int32 per output channel, mult float32 per output channel. Every output is
 *   acc = bias[c] + sum((x - in_zp) * w)    (padding contributes 0)
 *   y   = es_requant(acc, mult[c], out_zp, act_min - out_zp, act_max - out_zp)
 * bit for bit (es_common.h). Parameter structs are const and may live in flash.
 *
 * scratch: a 4-byte aligned buffer of ES_*_SCRATCH_BYTES (below; edgeshift.mcu.kernel_specs
 * computes the same numbers). It may be NULL when that size is 0.
 *
 * In place (out == in, the same base address) is supported exactly for:
 *   es_fc        always (the input is copied to scratch before any output is written);
 *   es_conv2d    1x1 kernel, stride 1, no padding, out_c <= in_c (pixels are copied to
 *                scratch before their outputs are written; output pixel p never reaches
 *                input pixel p + 2);
 * and never for es_dwconv2d. Any other overlap of in and out is undefined.
 *
 * Paths (es_acle.h): Helium on Cortex-M55 (conv, fc; depthwise uses the DSP path), DSP
 * (SXTB16/SMLAD) on Cortex-M4/M7/M33, portable C elsewhere. */
#ifndef ES_CONV_H
#define ES_CONV_H

#include <stdint.h>

typedef struct {
    int16_t in_h, in_w, in_c, out_h, out_w, out_c;
    uint8_t kh, kw, stride_h, stride_w, pad_t, pad_l, dil_h, dil_w;
    int32_t in_zp, out_zp, act_min, act_max;
    const int8_t *weights;
    const int32_t *bias;
    const float *mult;
} es_conv_t;

typedef struct {
    int16_t in_n, out_n;
    int32_t in_zp, out_zp, act_min, act_max;
    const int8_t *weights;
    const int32_t *bias;
    const float *mult;
} es_fc_t;

/* Scratch bytes, K = kh * kw * in_c. Helium: out_c int32 folded biases + two int8 columns;
 * DSP and portable: two int16 columns, plus one more when in_c % 4 != 0 (DSP packs them). */
#define ES_CONV_SCRATCH_BYTES_MVE(K, out_c) (4 * (out_c) + 2 * (((K) + 3) / 4 * 4))
#define ES_CONV_SCRATCH_BYTES_DSP(K, in_c) ((((in_c) % 4) ? 6 : 4) * (((K) + 1) / 2 * 2))
#define ES_DWCONV_SCRATCH_BYTES 0
#define ES_FC_SCRATCH_BYTES_MVE(in_n) (((in_n) + 3) / 4 * 4)
#define ES_FC_SCRATCH_BYTES_DSP(in_n) (2 * (((in_n) + 1) / 2 * 2))

void es_conv2d(const es_conv_t *p, const int8_t *in, int8_t *out, void *scratch);
void es_dwconv2d(const es_conv_t *p, const int8_t *in, int8_t *out, void *scratch);
void es_fc(const es_fc_t *p, const int8_t *in, int8_t *out, void *scratch);

#endif
