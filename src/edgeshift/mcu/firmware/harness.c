/* edgeshift Cortex-M harness, generic over any model library that provides model.h:
 *     #define MODEL_INPUT_BYTES N
 *     #define MODEL_OUTPUT_BYTES M
 *     int model_infer(const int8_t *in, int8_t *out);   (returns 0 on success)
 *
 * Protocol (semihosting, paths relative to QEMU's working directory on the host): read
 * ES_INPUT_PATH, a whole number of N-byte samples; run model_infer on each; write the M-byte
 * outputs in order to ES_OUTPUT_PATH; print "es-harness: ok <samples>" and return 0. Any
 * error prints one "es-harness: error: ..." line and returns non-zero.
 *
 * Samples are streamed one at a time so the input file may be larger than the board's RAM.
 * Only the model_infer call sits between es_mark_begin() and es_mark_end() (es_timed_infer):
 * the QEMU plugin counts the instructions executed between the two marks, so file I/O is
 * never counted. */
#include <stdint.h>
#include <stdio.h>

#include "model.h"

#ifndef ES_INPUT_PATH
#define ES_INPUT_PATH "es_input.bin"
#endif
#ifndef ES_OUTPUT_PATH
#define ES_OUTPUT_PATH "es_output.bin"
#endif

/* A single `bx lr` each: the plugin counts the instructions executed after the one at
 * es_mark_begin and before the one at es_mark_end. */
__attribute__((naked, noinline, used)) void es_mark_begin(void) { __asm volatile("bx lr"); }
__attribute__((naked, noinline, used)) void es_mark_end(void) { __asm volatile("bx lr"); }

/* In assembly so the counted region is the same on every compiler and -O level: besides
 * model_infer itself it holds exactly ES_MARK_OVERHEAD_INSNS = 2 instructions, the
 * `bl model_infer` and the `bl es_mark_end` (the marks leave r0/r1 alone; r4 is pushed only
 * to keep the stack 8-byte aligned). The runner subtracts them per sample. */
__attribute__((naked, noinline)) static int es_timed_infer(const int8_t *in, int8_t *out) {
    (void)in;
    (void)out;
    __asm volatile(
        "push {r4, lr}\n\t"
        "bl es_mark_begin\n\t"
        "bl model_infer\n\t"
        "bl es_mark_end\n\t"
        "pop {r4, pc}\n\t");
}

static int8_t es_in[MODEL_INPUT_BYTES] __attribute__((aligned(16)));
static int8_t es_out[MODEL_OUTPUT_BYTES] __attribute__((aligned(16)));

static int es_fail(const char *what, long sample) {
    printf("es-harness: error: %s (sample %ld)\n", what, sample);
    return 1;
}

int main(void) {
    FILE *in = fopen(ES_INPUT_PATH, "rb");
    if (in == NULL) return es_fail("cannot open input file " ES_INPUT_PATH, -1);
    FILE *out = fopen(ES_OUTPUT_PATH, "wb");
    if (out == NULL) return es_fail("cannot create output file " ES_OUTPUT_PATH, -1);

    long samples = 0;
    for (;;) {
        size_t got = fread(es_in, 1, MODEL_INPUT_BYTES, in);
        if (got == 0) break;
        if (got != MODEL_INPUT_BYTES) return es_fail("input file ends inside a sample", samples);
        int rc = es_timed_infer(es_in, es_out);
        if (rc != 0) return es_fail("model_infer returned non-zero", samples);
        if (fwrite(es_out, 1, MODEL_OUTPUT_BYTES, out) != MODEL_OUTPUT_BYTES)
            return es_fail("cannot write output file " ES_OUTPUT_PATH, samples);
        samples++;
    }
    if (ferror(in)) return es_fail("cannot read input file " ES_INPUT_PATH, samples);
    if (fclose(out) != 0) return es_fail("cannot close output file " ES_OUTPUT_PATH, samples);
    fclose(in);
    printf("es-harness: ok %ld\n", samples);
    return 0;
}
