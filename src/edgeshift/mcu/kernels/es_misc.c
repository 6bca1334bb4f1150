/* Portable C99 for the non-MAC ops; see es_misc.h for the contract. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off")
#endif
#include "es_misc.h"

#include <math.h>

/* rintf without libm: clamp far outside int8 (the callers saturate afterwards, so nothing
 * changes), then es_round_half_even, exact for |f| < 2^22 — newlib's rintf is a call into a
 * library the model would otherwise not need. */
/* The input rows (or columns) [*start, *end) a pooling window at output index O covers,
 * clipped to the input: padding takes no part. */
static inline void es_window(int32_t o, int32_t stride, int32_t pad, int32_t kernel, int32_t size,
                             int32_t *start, int32_t *end) {
    int32_t s = o * stride - pad;
    *end = s + kernel < size ? s + kernel : size;
    *start = s > 0 ? s : 0;
}

static inline float es_rintf(float f) {
    f = f < -4194304.0f ? -4194304.0f : (f > 4194304.0f ? 4194304.0f : f);
    return (float)es_round_half_even(f);
}

static int32_t es_sat8(int32_t v) { return v < -128 ? -128 : (v > 127 ? 127 : v); }

void es_avgpool(const es_pool_t *p, const int8_t *in, int8_t *out) {
    const int32_t C = p->channels;
    if (p->kind == ES_POOL_AVG_GLOBAL) {
        /* MLAS global average pool: integer sum, then the conv requantization */
        const int32_t count = (int32_t)p->in_h * p->in_w;
        const float lo = (float)(-128 - p->out_zp), hi = (float)(127 - p->out_zp);
        for (int32_t c = 0; c < C; c++) {
            int32_t acc = -p->in_zp * count;
            for (int32_t i = 0; i < count; i++) acc += in[i * C + c];
            out[c] = es_requant(acc, p->global_scale, p->out_zp, lo, hi);
        }
        return;
    }
    /* ORT's windowed path: dequantize, float sum in row order, divide, quantize */
    for (int32_t oy = 0; oy < p->out_h; oy++) {
        int32_t hs, he;
        es_window(oy, p->stride_h, p->pad_top, p->kernel_h, p->in_h, &hs, &he);
        for (int32_t ox = 0; ox < p->out_w; ox++) {
            int32_t ws, we;
            es_window(ox, p->stride_w, p->pad_left, p->kernel_w, p->in_w, &ws, &we);
            const int32_t count =
                p->count_include_pad ? p->kernel_h * p->kernel_w : (he - hs) * (we - ws);
            for (int32_t c = 0; c < C; c++) {
                float sum = 0.0f;
                for (int32_t y = hs; y < he; y++)
                    for (int32_t x = ws; x < we; x++) {
                        float v = p->in_scale * (float)(in[(y * p->in_w + x) * C + c] - p->in_zp);
                        sum = sum + v;
                    }
                float avg = sum / (float)count;
                float q = es_rintf(avg / p->out_scale + (float)p->out_zp);
                int32_t qi = q < -128.0f ? -128 : (q > 127.0f ? 127 : (int32_t)q);
                out[(oy * p->out_w + ox) * C + c] = (int8_t)qi;
            }
        }
    }
}

void es_maxpool(const es_pool_t *p, const int8_t *in, int8_t *out) {
    const int32_t C = p->channels;
    for (int32_t oy = 0; oy < p->out_h; oy++) {
        int32_t hs, he;
        es_window(oy, p->stride_h, p->pad_top, p->kernel_h, p->in_h, &hs, &he);
        for (int32_t ox = 0; ox < p->out_w; ox++) {
            int32_t ws, we;
            es_window(ox, p->stride_w, p->pad_left, p->kernel_w, p->in_w, &ws, &we);
            for (int32_t c = 0; c < C; c++) {
                int8_t m = -128;
                for (int32_t y = hs; y < he; y++)
                    for (int32_t x = ws; x < we; x++) {
                        int8_t v = in[(y * p->in_w + x) * C + c];
                        m = v > m ? v : m;
                    }
                out[(oy * p->out_w + ox) * C + c] = m;
            }
        }
    }
}

void es_add(const es_add_t *p, const int8_t *a, const int8_t *b, int8_t *out) {
    for (uint32_t i = 0; i < p->size; i++) {
        /* ORT's AVX2 QLinearAdd: two fused multiply-adds on the raw int8 values */
        float t = fmaf((float)b[i], p->ratio_b, p->fixed);
        t = fmaf((float)a[i], p->ratio_a, t);
        int32_t v = es_sat8(es_round_half_even(t));
        v = v < p->act_min ? p->act_min : (v > p->act_max ? p->act_max : v);
        out[i] = (int8_t)v;
    }
}

void es_softmax(const es_softmax_t *p, const int8_t *in, int8_t *out) {
    const int32_t D = p->length;
    for (int32_t r = 0; r < p->rows; r++, in += D, out += D) {
        int32_t xmax = -128;
        for (int32_t i = 0; i < D; i++) xmax = in[i] > xmax ? in[i] : xmax;
        const int32_t adjust = 127 - xmax;
        float vsum = 0.0f;
        for (int32_t i = 0; i < D; i++) vsum = vsum + p->table[(uint8_t)(adjust + in[i])];
        for (int32_t i = 0; i < D; i++) {
            float vt = p->table[(uint8_t)(adjust + in[i])];
            int32_t q = (int32_t)es_rintf((vt * p->y_scale) / vsum) + p->y_zp;
            out[i] = (int8_t)es_sat8(q);
        }
    }
}

void es_pad(const es_pad_t *p, const int8_t *in, int8_t *out) {
    const uint32_t C = p->channels;
    const uint32_t out_w = (uint32_t)p->in_w + p->pad_left + p->pad_right;
    const uint32_t out_h = (uint32_t)p->in_h + p->pad_top + p->pad_bottom;
    memset(out, p->zero_point, (size_t)out_h * out_w * C);
    for (uint32_t y = 0; y < p->in_h; y++)
        memcpy(out + ((y + p->pad_top) * out_w + p->pad_left) * C, in + y * p->in_w * C,
               (size_t)p->in_w * C);
}

void es_concat(const es_concat_t *p, const int8_t *const *in, int8_t *out) {
    uint32_t out_c = 0;
    for (uint32_t k = 0; k < p->n_inputs; k++) out_c += p->channels[k];
    const float lo = (float)(-128 - p->out_zp), hi = (float)(127 - p->out_zp);
    uint32_t offset = 0;
    for (uint32_t k = 0; k < p->n_inputs; k++) {
        const uint32_t C = p->channels[k];
        const int same = p->in_scale[k] == p->out_scale && p->in_zp[k] == p->out_zp;
        for (uint32_t px = 0; px < p->pixels; px++) {
            const int8_t *src = in[k] + px * C;
            int8_t *dst = out + px * out_c + offset;
            if (same) {
                memcpy(dst, src, C);
                continue;
            }
            for (uint32_t c = 0; c < C; c++) {
                float v = p->in_scale[k] * (float)(src[c] - p->in_zp[k]);
                v = v / p->out_scale;
                v = v < lo ? lo : (v > hi ? hi : v);
                dst[c] = (int8_t)(es_round_half_even(v) + p->out_zp);
            }
        }
        offset += C;
    }
}

void es_clamp(const es_clamp_t *p, const int8_t *in, int8_t *out) {
    for (uint32_t i = 0; i < p->size; i++) {
        int8_t v = in[i];
        out[i] = v < p->act_min ? p->act_min : (v > p->act_max ? p->act_max : v);
    }
}
