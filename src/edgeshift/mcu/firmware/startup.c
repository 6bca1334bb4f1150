/* edgeshift Cortex-M startup: vector table, reset handler, fault reporting over semihosting.
 *
 * The linker script (one per board) provides the symbols used here. Reset copies .data from
 * flash, clears .bss, turns on the FPU (and Helium, which shares CP10/CP11 on Armv8.1-M),
 * makes integer division by zero trap, then runs newlib's semihosting setup and main().
 * A fault prints one line ("es-fault: ...") and exits with ES_FAULT_EXIT_CODE, so a broken
 * firmware ends the QEMU run at once instead of locking up until the timeout. */
#include <stdint.h>
#include <stdlib.h>

#define ES_FAULT_EXIT_CODE 120

extern uint32_t __stack_top;
extern uint32_t __data_load, __data_start, __data_end;
extern uint32_t __bss_start, __bss_end;

extern int main(void);
extern void initialise_monitor_handles(void);
extern void __libc_init_array(void);

void Reset_Handler(void);
void es_fault_handler(void);

/* -nostartfiles drops crti/crtn; __libc_init_array still calls these. */
void _init(void) {}
void _fini(void) {}

#define SCB_CPACR (*(volatile uint32_t *)0xE000ED88u)
#define SCB_CCR (*(volatile uint32_t *)0xE000ED14u)
#define SCB_CFSR (*(volatile uint32_t *)0xE000ED28u)
#define SCB_HFSR (*(volatile uint32_t *)0xE000ED2Cu)
#define SCB_MMFAR (*(volatile uint32_t *)0xE000ED34u)
#define SCB_BFAR (*(volatile uint32_t *)0xE000ED38u)
#define CCR_DIV_0_TRP (1u << 4)

__attribute__((section(".isr_vector"), used)) void (*const es_vector_table[16])(void) = {
    (void (*)(void))(&__stack_top),
    Reset_Handler,
    es_fault_handler, /* NMI */
    es_fault_handler, /* HardFault */
    es_fault_handler, /* MemManage */
    es_fault_handler, /* BusFault */
    es_fault_handler, /* UsageFault */
    es_fault_handler, /* SecureFault (Armv8-M) */
    0, 0, 0,
    es_fault_handler, /* SVCall */
    es_fault_handler, /* DebugMonitor */
    0,
    es_fault_handler, /* PendSV */
    es_fault_handler, /* SysTick */
};

__attribute__((noreturn)) void Reset_Handler(void) {
    uint32_t *src = &__data_load;
    for (uint32_t *dst = &__data_start; dst < &__data_end;) *dst++ = *src++;
    for (uint32_t *dst = &__bss_start; dst < &__bss_end;) *dst++ = 0;
#if defined(__ARM_FP) || defined(__ARM_FEATURE_MVE)
    SCB_CPACR |= (0xFu << 20); /* CP10 + CP11 full access: FPU, and MVE on Armv8.1-M */
    __asm volatile("dsb\n\tisb" ::: "memory");
#endif
    /* Integer division by zero returns 0 silently on Cortex-M unless trapped. */
    SCB_CCR |= CCR_DIV_0_TRP;
    initialise_monitor_handles();
    __libc_init_array();
    exit(main());
}

/* Raw semihosting, usable from a fault handler where newlib's stdio may be in any state. */
static int es_semihost(int op, const void *arg) {
    register int r0 __asm("r0") = op;
    register const void *r1 __asm("r1") = arg;
    __asm volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

static char *es_hex(char *p, uint32_t v) {
    *p++ = '0';
    *p++ = 'x';
    for (int shift = 28; shift >= 0; shift -= 4) *p++ = "0123456789abcdef"[(v >> shift) & 0xFu];
    return p;
}

static char *es_str(char *p, const char *s) {
    while (*s) *p++ = *s++;
    return p;
}

__attribute__((noreturn, used)) void es_fault_report(const uint32_t *frame, uint32_t ipsr) {
    static const char *const names[16] = {
        "exception 0", "reset", "NMI", "HardFault", "MemManage", "BusFault", "UsageFault",
        "SecureFault", "exception 8", "exception 9", "exception 10", "SVCall", "DebugMonitor",
        "exception 13", "PendSV", "SysTick",
    };
    char line[160];
    char *p = es_str(line, "es-fault: ");
    p = es_str(p, ipsr < 16 ? names[ipsr] : "external interrupt");
    p = es_str(p, " at pc=");
    p = es_hex(p, frame[6]);
    p = es_str(p, " lr=");
    p = es_hex(p, frame[5]);
    p = es_str(p, " cfsr=");
    p = es_hex(p, SCB_CFSR);
    p = es_str(p, " hfsr=");
    p = es_hex(p, SCB_HFSR);
    if (SCB_CFSR & (1u << 15)) { /* BFARVALID */
        p = es_str(p, " bfar=");
        p = es_hex(p, SCB_BFAR);
    }
    *p++ = '\n';
    *p = 0;
    es_semihost(0x04, line); /* SYS_WRITE0 */
    /* SYS_EXIT_EXTENDED carries an exit status on 32-bit targets; plain SYS_EXIT does not. */
    uint32_t block[2] = {0x20026u /* ADP_Stopped_ApplicationExit */, ES_FAULT_EXIT_CODE};
    es_semihost(0x20, block);
    for (;;) {
    }
}

/* The stacked frame is on MSP or PSP depending on EXC_RETURN bit 2. */
__attribute__((naked)) void es_fault_handler(void) {
    __asm volatile(
        "tst lr, #4\n\t"
        "ite eq\n\t"
        "mrseq r0, msp\n\t"
        "mrsne r0, psp\n\t"
        "mrs r1, ipsr\n\t"
        "b es_fault_report\n\t");
}
