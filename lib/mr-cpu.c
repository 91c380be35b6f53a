/* mr-cpu.c: per-vCPU registers from the `cpu` device sections (qemu-save-formats.md §9).
 *
 * Each vCPU is one FULL section named "cpu" whose instance is the CPU index; mr-devstate.c
 * locates its fields by name. The architecture is told by the fields themselves (x86
 * env.regs + env.eip, arm env.xregs, riscv env.gpr), not guessed from the machine type.
 * Every value is big-endian in the stream (vmstate put_be*). A CPU whose fields we cannot
 * all find gives no registers at all, with the reason, rather than a partial set. */
#include "mr-private.h"

#include <string.h>

/* KVM-style ids QEMU stores in cpreg_vmstate_indexes (target/arm kvm_to_cpreg_id):
 * ARM64 | SIZE_U64 | SYSREG | op0 << 14 | op1 << 11 | crn << 7 | crm << 3 | op2. */
#define ARM64_SYSREG(op0, op1, crn, crm, op2)                                                      \
    (G_GUINT64_CONSTANT(0x6030000000130000) | (op0) << 14 | (op1) << 11 | (crn) << 7 |             \
     (crm) << 3 | (op2))
#define ARM64_SCTLR_EL1 ARM64_SYSREG(3u, 0u, 1u, 0u, 0u)
#define ARM64_TTBR0_EL1 ARM64_SYSREG(3u, 0u, 2u, 0u, 0u)
#define ARM64_TTBR1_EL1 ARM64_SYSREG(3u, 0u, 2u, 0u, 1u)
#define ARM64_TCR_EL1   ARM64_SYSREG(3u, 0u, 2u, 0u, 2u)

#define MAX_CPUS   4096
#define MAX_CPREGS 4096

typedef struct {
    const MrImage *img;
    const MrDevice *dev;
    const char *missing; /* the first field we could not read */
} Fields;

static guint64 field(Fields *f, const char *name, guint index, const char *member)
{
    guint64 v = 0;
    if (!mr_device_read_be(f->img, f->dev, name, index, member, &v) && f->missing == NULL)
        f->missing = name;
    return v;
}

static void read_segment(Fields *f, const char *name, guint index, MrSegment *seg)
{
    seg->selector = (guint32)field(f, name, index, "selector");
    seg->base = field(f, name, index, "base");
    seg->limit = (guint32)field(f, name, index, "limit");
    seg->flags = (guint32)field(f, name, index, "flags");
}

/* target/i386/machine.c vmstate_x86_cpu. */
static void read_x86(Fields *f, MrCpu *cpu)
{
    for (guint i = 0; i < 16; i++)
        cpu->gpr[i] = field(f, "env.regs", i, NULL);
    cpu->pc = field(f, "env.eip", 0, NULL);
    cpu->flags = field(f, "env.eflags", 0, NULL);
    cpu->hflags = (guint32)field(f, "env.hflags", 0, NULL);
    for (guint i = 0; i < 6; i++)
        read_segment(f, "env.segs", i, &cpu->seg[i]);
    read_segment(f, "env.ldt", 0, &cpu->ldt);
    read_segment(f, "env.tr", 0, &cpu->tr);
    read_segment(f, "env.gdt", 0, &cpu->gdt);
    read_segment(f, "env.idt", 0, &cpu->idt);
    static const char *const cr_names[5] = {"env.cr[0]", NULL, "env.cr[2]", "env.cr[3]",
                                            "env.cr[4]"}; /* cr[1] does not exist */
    for (guint i = 0; i < 5; i++)
        cpu->cr[i] = cr_names[i] ? field(f, cr_names[i], 0, NULL) : 0;
    cpu->efer = field(f, "env.efer", 0, NULL);
    cpu->kernel_gs_base = field(f, "env.kernelgsbase", 0, NULL);
}

/* The system registers we show, from the cpreg_vmstate arrays, in one pass over the index
 * array instead of one per register (a register that is absent stays 0). */
static void arm_sysregs(Fields *f, MrCpu *cpu)
{
    const struct {
        guint64 id;
        guint64 *value;
    } wanted[] = {{ARM64_SCTLR_EL1, &cpu->sctlr_el1},
                  {ARM64_TTBR0_EL1, &cpu->ttbr0_el1},
                  {ARM64_TTBR1_EL1, &cpu->ttbr1_el1},
                  {ARM64_TCR_EL1, &cpu->tcr_el1}};
    gboolean seen[G_N_ELEMENTS(wanted)] = {FALSE};
    guint64 index;
    /* QEMU's list has a few hundred registers; a hostile one may claim 2^24 */
    for (guint i = 0; i < MAX_CPREGS &&
                      mr_device_read_be(f->img, f->dev, "cpreg_vmstate_indexes", i, NULL, &index);
         i++) {
        for (guint w = 0; w < G_N_ELEMENTS(wanted); w++) {
            if (index == wanted[w].id && !seen[w]) { /* a repeated id: the first counts */
                *wanted[w].value = field(f, "cpreg_vmstate_values", i, NULL);
                seen[w] = cpu->has_sysregs = TRUE;
            }
        }
    }
}

/* target/arm/machine.c vmstate_arm_cpu: in AArch64 state x31 is SP (env.xregs[31]); the
 * "cpsr" field holds PSTATE (put_cpsr writes pstate_read() for a 64-bit CPU). */
static void read_aarch64(Fields *f, MrCpu *cpu)
{
    for (guint i = 0; i < 32; i++)
        cpu->gpr[i] = field(f, "env.xregs", i, NULL);
    cpu->pc = field(f, "env.pc", 0, NULL);
    cpu->flags = field(f, "cpsr", 0, NULL);
    arm_sysregs(f, cpu);
}

/* target/riscv/machine.c vmstate_riscv_cpu. */
static void read_riscv64(Fields *f, MrCpu *cpu)
{
    for (guint i = 0; i < 32; i++)
        cpu->gpr[i] = field(f, "env.gpr", i, NULL);
    cpu->pc = field(f, "env.pc", 0, NULL);
    cpu->satp = field(f, "env.satp", 0, NULL);
    cpu->priv = field(f, "env.priv", 0, NULL);
    cpu->mstatus = field(f, "env.mstatus", 0, NULL);
}

static gboolean has_field(const MrDevice *dev, const char *name, guint32 size)
{
    guint64 offset;
    guint32 got;
    return mr_device_field(dev, name, 0, NULL, &offset, &got) && got == size;
}

static MrArch arch_of(const MrDevice *dev)
{
    if (has_field(dev, "env.regs", 8) && has_field(dev, "env.eip", 8))
        return MR_ARCH_X86_64;
    if (has_field(dev, "env.xregs", 8) && has_field(dev, "env.pc", 8))
        return MR_ARCH_AARCH64;
    if (has_field(dev, "env.gpr", 8) && has_field(dev, "env.pc", 8))
        return MR_ARCH_RISCV64;
    return MR_ARCH_NONE;
}

const char *mr_arch_name(MrArch arch)
{
    static const char *const names[] = {"unknown", "x86_64", "aarch64", "riscv64"};
    return names[arch];
}

/* Collect the vCPUs in section order; the first CPU decides the architecture. */
gboolean mr_cpu_load(MrImage *img, GError **error)
{
    img->cpus = g_array_new(FALSE, TRUE, sizeof(MrCpu));
    for (guint i = 0; i < mr_devstate_n_devices(img) && img->cpus->len < MAX_CPUS; i++) {
        const MrDevice *dev = mr_devstate_device(img, i);
        if (strcmp(mr_device_name(dev), "cpu") != 0)
            continue;
        MrArch arch = arch_of(dev);
        if (img->cpus->len == 0)
            img->arch = arch;
        if (arch == MR_ARCH_NONE || arch != img->arch) {
            g_set_error(error, MR_ERROR, MR_ERROR_UNSUPPORTED,
                        "cpu %u: a register layout mramfs does not know", mr_device_instance(dev));
            g_array_set_size(img->cpus, 0);
            return FALSE;
        }
        MrCpu cpu = {.index = mr_device_instance(dev)};
        Fields f = {img, dev, NULL};
        if (arch == MR_ARCH_X86_64)
            read_x86(&f, &cpu);
        else if (arch == MR_ARCH_AARCH64)
            read_aarch64(&f, &cpu);
        else
            read_riscv64(&f, &cpu);
        if (f.missing != NULL) {
            g_set_error(error, MR_ERROR, MR_ERROR_CORRUPT, "cpu %u: field %s cannot be read",
                        cpu.index, f.missing);
            g_array_set_size(img->cpus, 0);
            return FALSE;
        }
        g_array_append_val(img->cpus, cpu);
    }
    if (img->cpus->len == 0) {
        g_set_error(error, MR_ERROR, MR_ERROR_UNSUPPORTED, "no cpu sections in the device state");
        return FALSE;
    }
    return TRUE;
}

/* ---- the registers as JSON (docs/file-tree.md §11) ---- */

static void hex(GString *out, const char *name, guint64 v)
{
    g_string_append_printf(out, ", \"%s\": \"0x%" G_GINT64_MODIFIER "x\"", name, v);
}

/* Segments with selector and flags; the descriptor tables (gdt, idt) only have base/limit. */
static void segment_json(GString *out, const char *name, const MrSegment *s, gboolean full)
{
    g_string_append_printf(out, ", \"%s\": {", name);
    if (full)
        g_string_append_printf(out, "\"selector\": \"0x%x\", ", s->selector);
    g_string_append_printf(out, "\"base\": \"0x%" G_GINT64_MODIFIER "x\", \"limit\": \"0x%x\"",
                           s->base, s->limit);
    if (full)
        g_string_append_printf(out, ", \"flags\": \"0x%x\"", s->flags);
    g_string_append_c(out, '}');
}

/* Names in QEMU's env.regs order (R_EAX = 0, R_ECX, R_EDX, R_EBX, R_ESP, R_EBP, …). */
static const char *const x86_gpr_names[16] = {"rax", "rcx", "rdx", "rbx", "rsp", "rbp",
                                              "rsi", "rdi", "r8",  "r9",  "r10", "r11",
                                              "r12", "r13", "r14", "r15"};
static const char *const x86_seg_names[6] = {"es", "cs", "ss", "ds", "fs", "gs"};

static void x86_json(GString *out, const MrCpu *cpu)
{
    for (guint i = 0; i < 16; i++)
        hex(out, x86_gpr_names[i], cpu->gpr[i]);
    hex(out, "rip", cpu->pc);
    hex(out, "rflags", cpu->flags);
    g_string_append_printf(out, ", \"cpl\": %u", cpu->hflags & 3);
    for (guint i = 0; i < 6; i++)
        segment_json(out, x86_seg_names[i], &cpu->seg[i], TRUE);
    segment_json(out, "ldt", &cpu->ldt, TRUE);
    segment_json(out, "tr", &cpu->tr, TRUE);
    segment_json(out, "gdt", &cpu->gdt, FALSE);
    segment_json(out, "idt", &cpu->idt, FALSE);
    hex(out, "cr0", cpu->cr[0]);
    hex(out, "cr2", cpu->cr[2]);
    hex(out, "cr3", cpu->cr[3]);
    hex(out, "cr4", cpu->cr[4]);
    hex(out, "efer", cpu->efer);
    hex(out, "kernel_gs_base", cpu->kernel_gs_base);
}

static void gpr_json(GString *out, const MrCpu *cpu, guint n)
{
    for (guint i = 0; i < n; i++) {
        char name[8];
        g_snprintf(name, sizeof name, "x%u", i);
        hex(out, name, cpu->gpr[i]);
    }
}

static void aarch64_json(GString *out, const MrCpu *cpu)
{
    hex(out, "pc", cpu->pc);
    hex(out, "sp", cpu->gpr[31]);
    hex(out, "pstate", cpu->flags);
    gpr_json(out, cpu, 31);
    if (cpu->has_sysregs) {
        hex(out, "sctlr_el1", cpu->sctlr_el1);
        hex(out, "ttbr0_el1", cpu->ttbr0_el1);
        hex(out, "ttbr1_el1", cpu->ttbr1_el1);
        hex(out, "tcr_el1", cpu->tcr_el1);
    }
}

static void riscv64_json(GString *out, const MrCpu *cpu)
{
    hex(out, "pc", cpu->pc);
    hex(out, "sp", cpu->gpr[2]);
    hex(out, "satp", cpu->satp);
    hex(out, "priv", cpu->priv);
    hex(out, "mstatus", cpu->mstatus);
    gpr_json(out, cpu, 32);
}

GBytes *mr_cpu_json(const MrImage *img)
{
    if (img->cpus == NULL || img->cpus->len == 0)
        return NULL;
    GString *out = g_string_new(NULL);
    g_string_append_printf(out, "{\"arch\": \"%s\", \"cpus\": [", mr_arch_name(img->arch));
    for (guint i = 0; i < img->cpus->len; i++) {
        const MrCpu *cpu = &g_array_index(img->cpus, MrCpu, i);
        g_string_append_printf(out, "%s\n  {\"index\": %u", i ? "," : "", cpu->index);
        if (img->arch == MR_ARCH_X86_64)
            x86_json(out, cpu);
        else if (img->arch == MR_ARCH_AARCH64)
            aarch64_json(out, cpu);
        else
            riscv64_json(out, cpu);
        g_string_append_c(out, '}');
    }
    g_string_append(out, "\n]}\n");
    gsize len = out->len;
    return g_bytes_new_take(g_string_free(out, FALSE), len);
}
