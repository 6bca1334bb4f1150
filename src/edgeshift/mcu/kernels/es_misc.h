/* edgeshift MCU kernels: the ops without multiply-accumulates (pooling, add, softmax, pad,
 * concat, clamp). NHWC int8, batch 1; parameters are const structs in flash. Each kernel
 * reproduces ONNX Runtime 1.32's integer kernel bit for bit (see reference.py, which is the
 * golden model they are tested against).
 *
 * Build es_misc.c without floating-point contraction (-ffp-contract=off; the file also asks
 * GCC for it): ORT rounds every float32 multiply and add separately, except in Add, whose
 * AVX2 kernel uses fused multiply-adds, which es_add spells out with fmaf. */
#ifndef ES_MISC_H
#define ES_MISC_H

#include "es_common.h"

enum { ES_POOL_AVG = 0, ES_POOL_AVG_GLOBAL = 1, ES_POOL_MAX = 2 };

typedef struct {
    uint16_t in_h, in_w, channels;
    uint16_t out_h, out_w;
    uint16_t kernel_h, kernel_w, stride_h, stride_w;
    uint16_t pad_top, pad_left;
    uint8_t kind;              /* ES_POOL_* */
    uint8_t count_include_pad; /* windowed average only */
    int32_t in_zp, out_zp;
    float in_scale, out_scale; /* windowed average */
    float global_scale;        /* global average: in_scale / (out_scale * (float)(kernel_h*kernel_w)) */
} es_pool_t;

typedef struct {
    uint32_t size;                /* elements of each input */
    float ratio_a, ratio_b, fixed; /* reference.add_params */
    int32_t act_min, act_max;
} es_add_t;

typedef struct {
    uint16_t rows, length;
    const float *table; /* 256 entries, reference.softmax_table */
    float y_scale;      /* reference.softmax_y_scale: floor(1 / out_scale) */
    int32_t y_zp;
} es_softmax_t;

typedef struct {
    uint16_t in_h, in_w, channels;
    uint16_t pad_top, pad_left, pad_bottom, pad_right;
    int8_t zero_point;
} es_pad_t;

typedef struct {
    uint16_t n_inputs;
    uint32_t pixels;           /* H * W, shared by every input */
    const uint16_t *channels;  /* per input */
    const float *in_scale;     /* per input */
    const int32_t *in_zp;      /* per input */
    float out_scale;
    int32_t out_zp;
} es_concat_t;

typedef struct {
    uint32_t size;
    int8_t act_min, act_max;
} es_clamp_t;

void es_avgpool(const es_pool_t *p, const int8_t *in, int8_t *out);
void es_maxpool(const es_pool_t *p, const int8_t *in, int8_t *out);
void es_add(const es_add_t *p, const int8_t *a, const int8_t *b, int8_t *out);
void es_softmax(const es_softmax_t *p, const int8_t *in, int8_t *out);
void es_pad(const es_pad_t *p, const int8_t *in, int8_t *out);
void es_concat(const es_concat_t *p, const int8_t *const *in, int8_t *out);
void es_clamp(const es_clamp_t *p, const int8_t *in, int8_t *out);

#endif
