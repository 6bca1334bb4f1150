/* edgeshift QEMU TCG plugin: exact count of executed guest instructions (QEMU 7.2, plugin
 * API version 1). Built by edgeshift with the host's `gcc -shared -fPIC`.
 *
 * Arguments: out=PATH (report file, written at exit), begin=ADDR, end=ADDR (optional, hex:
 * the first instructions of es_mark_begin and es_mark_end).
 * Report: "total N", "marked M", "pairs P" lines. total counts every instruction executed;
 * marked sums, over each begin/end pair, the instructions executed after the begin
 * instruction and before the end instruction.
 *
 * Every translation block adds its instruction count to one counter inline (no callback per
 * instruction, so the cost stays near plain TCG). A block's add runs at its start, so at
 * instruction i of an n-instruction block the counter is ahead by n - i: the two mark
 * callbacks subtract that to read the exact count before their instruction.
 *
 * Debian ships no qemu-plugin.h: the few declarations used are copied in shape from QEMU
 * 7.2's include/qemu/qemu-plugin.h (API version 1). */
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef uint64_t qemu_plugin_id_t;
typedef struct qemu_info_t qemu_info_t; /* only passed through */
struct qemu_plugin_tb;
struct qemu_plugin_insn;

enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS, QEMU_PLUGIN_CB_R_REGS, QEMU_PLUGIN_CB_RW_REGS };
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };

typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*qemu_plugin_vcpu_udata_cb_t)(unsigned int vcpu_index, void *userdata);
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);

void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb, enum qemu_plugin_op op,
                                              void *ptr, uint64_t imm);
void qemu_plugin_register_vcpu_insn_exec_cb(struct qemu_plugin_insn *insn,
                                            qemu_plugin_vcpu_udata_cb_t cb,
                                            enum qemu_plugin_cb_flags flags, void *userdata);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb,
                                    void *userdata);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb, size_t idx);
uint64_t qemu_plugin_insn_vaddr(const struct qemu_plugin_insn *insn);
void qemu_plugin_outs(const char *string);

__attribute__((visibility("default"))) int qemu_plugin_version = 1;

static uint64_t total_insns;
static uint64_t marked_insns;
static uint64_t pairs;
static uint64_t begin_count; /* instructions executed before the last begin mark */
static bool inside;
static uint64_t begin_addr = UINT64_MAX, end_addr = UINT64_MAX;
static char out_path[4096];

/* userdata carries n - i, how far the inline counter is ahead at this instruction. */
static void on_begin(unsigned int vcpu, void *ahead) {
    (void)vcpu;
    begin_count = total_insns - (uint64_t)(uintptr_t)ahead;
    inside = true;
}

static void on_end(unsigned int vcpu, void *ahead) {
    (void)vcpu;
    if (!inside) return; /* an end without a begin marks nothing */
    uint64_t now = total_insns - (uint64_t)(uintptr_t)ahead;
    marked_insns += now - begin_count - 1; /* the begin instruction itself is not counted */
    pairs++;
    inside = false;
}

static void on_tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
    (void)id;
    size_t n = qemu_plugin_tb_n_insns(tb);
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &total_insns, n);
    for (size_t i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        uint64_t pc = qemu_plugin_insn_vaddr(insn);
        void *ahead = (void *)(uintptr_t)(n - i);
        if (pc == begin_addr)
            qemu_plugin_register_vcpu_insn_exec_cb(insn, on_begin, QEMU_PLUGIN_CB_NO_REGS, ahead);
        else if (pc == end_addr)
            qemu_plugin_register_vcpu_insn_exec_cb(insn, on_end, QEMU_PLUGIN_CB_NO_REGS, ahead);
    }
}

static void on_qemu_exit(qemu_plugin_id_t id, void *userdata) {
    (void)id;
    (void)userdata;
    FILE *f = fopen(out_path, "w");
    if (f == NULL) {
        qemu_plugin_outs("insn_count: cannot write the report file\n");
        return;
    }
    fprintf(f, "total %" PRIu64 "\nmarked %" PRIu64 "\npairs %" PRIu64 "\n", total_insns,
            marked_insns, pairs);
    fclose(f);
}

__attribute__((visibility("default"))) int qemu_plugin_install(qemu_plugin_id_t id,
                                                               const qemu_info_t *info,
                                                               int argc, char **argv) {
    (void)info;
    for (int i = 0; i < argc; i++) {
        const char *arg = argv[i];
        if (strncmp(arg, "out=", 4) == 0) {
            snprintf(out_path, sizeof out_path, "%s", arg + 4);
        } else if (strncmp(arg, "begin=", 6) == 0) {
            begin_addr = strtoull(arg + 6, NULL, 0) & ~(uint64_t)1; /* drop the Thumb bit */
        } else if (strncmp(arg, "end=", 4) == 0) {
            end_addr = strtoull(arg + 4, NULL, 0) & ~(uint64_t)1;
        } else {
            fprintf(stderr, "insn_count: unknown argument %s\n", arg);
            return -1;
        }
    }
    if (out_path[0] == '\0') {
        fprintf(stderr, "insn_count: needs out=PATH\n");
        return -1;
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_tb_trans);
    qemu_plugin_register_atexit_cb(id, on_qemu_exit, NULL);
    return 0;
}
