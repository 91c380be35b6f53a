/* test-devstate.c: lib/mr-devstate.c (device state measured from the VM description),
 * lib/mr-cpu.c (vCPU registers, cpus.json), lib/mr-elfcore.c (physmem.elf) and the VGA BAR
 * rule of lib/mr-physmem.c, through synthetic images whose device state is written here.
 *
 * A Dev writes FULL sections (04, be32 id, name, be32 instance, be32 version, payload,
 * footer 7e be32 id) and, field by field, the VM description entry that measures them, so
 * every payload and its description agree unless a test makes them disagree on purpose.
 * Register values are all distinct (and differ from CPU to CPU), so a value read from the
 * wrong offset, the wrong CPU or in the wrong byte order shows. Expected ELF notes are
 * written out here from the kernel/QEMU layouts, not from lib/mr-elfcore.c.
 *
 * Three tests were written as failing tests for bugs they found, fixed in lib/ since:
 * test_nesting_hidden_from_depth_check (a JSON comment or single quote hid brackets from
 * the depth check: json-glib overflowed the stack), test_payload_length's last variants (a
 * description 5 bytes longer than the payload swallowed the footer unnoticed) and the
 * BAR1 = 0xff000000 case of test_vga_bar_64 (a 64-bit BAR near 2^64 sized the view's page
 * bitmap at 512 TiB: abort). */
#include "test-helpers.h"

#include <json-glib/json-glib.h>
#include <string.h>

#define PS  4096u
#define KiB (G_GUINT64_CONSTANT(1) << 10)
#define MiB (G_GUINT64_CONSTANT(1) << 20)
#define GiB (G_GUINT64_CONSTANT(1) << 30)

#define PT_LOAD     1
#define PT_NOTE     4
#define EM_X86_64   62
#define EM_AARCH64  183
#define EM_RISCV    243
#define EHDR_SIZE   64
#define PHDR_SIZE   56
#define MAX_PHDRS   16
#define HEAD_BYTES  (2 * PS)
#define VGA_PCI     "0000:00:01.0"
#define VGA_BLOCK   VGA_PCI "/vga.vram"
#define VGA_DEVICE  VGA_PCI "/vga"
#define MAX_NESTING 8

static const MrOpenOptions no_index = {.index_path = ""};

/* ---- writing device state and its description ---- */

typedef struct {
    GByteArray *bytes; /* the FULL sections, as the stream holds them */
    GString *devices;  /* the "devices" entries of the VM description */
    guint32 next_id;   /* section id of the next section */
    guint32 id;        /* of the section being written */
    gboolean footers;  /* write section footers (QEMU: always) */
    gboolean hide;     /* the section being written stays out of the description */
    gsize hide_from;
    guint depth; /* open vmsds: the device, then subsections */
    gboolean in_fields[MAX_NESTING];
    guint n_items[MAX_NESTING];
} Dev;

static void dev_init(Dev *d)
{
    memset(d, 0, sizeof *d);
    d->bytes = g_byte_array_new();
    d->devices = g_string_new(NULL);
    d->next_id = 2;
    d->footers = TRUE;
}

static void dev_clear(Dev *d)
{
    g_byte_array_unref(d->bytes);
    g_string_free(d->devices, TRUE);
}

static void put_be(GByteArray *b, guint64 v, guint size)
{
    for (guint i = 0; i < size; i++)
        ib_put_u8(b, (guint8)(v >> (8 * (size - 1 - i))));
}

static void push(Dev *d)
{
    g_assert(d->depth < MAX_NESTING);
    d->in_fields[d->depth] = TRUE;
    d->n_items[d->depth] = 0;
    d->depth++;
}

static void pop(Dev *d)
{
    g_assert(d->depth > 0);
    g_string_append(d->devices, "]}");
    d->depth--;
}

/* The separator before the next field or subsection of the innermost vmsd. */
static void item(Dev *d)
{
    if (d->n_items[d->depth - 1]++ > 0)
        g_string_append(d->devices, ", ");
}

static void dev_begin(Dev *d, const char *name, guint32 instance, guint32 version)
{
    g_assert(d->depth == 0);
    d->id = d->next_id++;
    ib_put_u8(d->bytes, 0x04);
    ib_put_be32(d->bytes, d->id);
    ib_put_name(d->bytes, name);
    ib_put_be32(d->bytes, instance);
    ib_put_be32(d->bytes, version);
    d->hide_from = d->devices->len;
    const char *slash = strrchr(name, '/');
    g_string_append_printf(d->devices,
                           "%s{\"name\": \"%s\", \"instance_id\": %u, \"vmsd_name\": \"%s\", "
                           "\"version\": %u, \"fields\": [",
                           d->devices->len ? ", " : "", name, instance, slash ? slash + 1 : name,
                           version);
    push(d);
}

static void dev_end(Dev *d)
{
    g_assert(d->depth == 1);
    pop(d);
    if (d->hide)
        g_string_truncate(d->devices, d->hide_from);
    d->hide = FALSE;
    if (d->footers) {
        ib_put_u8(d->bytes, 0x7e);
        ib_put_be32(d->bytes, d->id);
    }
}

/* A subsection as vmstate_subsection_save sends it: 05, u8 len, name, be32 version. */
static void sub_begin(Dev *d, const char *name, guint32 version)
{
    guint l = d->depth - 1;
    if (d->in_fields[l]) {
        g_string_append(d->devices, "], \"subsections\": [");
        d->in_fields[l] = FALSE;
        d->n_items[l] = 0;
    }
    item(d);
    g_string_append_printf(d->devices, "{\"vmsd_name\": \"%s\", \"version\": %u, \"fields\": [",
                           name, version);
    ib_put_u8(d->bytes, 0x05);
    ib_put_name(d->bytes, name);
    ib_put_be32(d->bytes, version);
    push(d);
}

static void sub_end(Dev *d)
{
    g_assert(d->depth > 1);
    pop(d);
}

/* A field's description only (with no bytes: a payload shorter than described). */
static void field_json(Dev *d, const char *json)
{
    g_assert(d->in_fields[d->depth - 1]);
    item(d);
    g_string_append(d->devices, json);
}

/* Payload bytes only (a payload longer than described). */
static void dev_raw(Dev *d, const void *bytes, gsize len)
{
    ib_put_bytes(d->bytes, bytes, len);
}

static void f_int(Dev *d, const char *name, const char *type, guint size, guint64 v)
{
    g_autofree char *json =
        g_strdup_printf("{\"name\": \"%s\", \"type\": \"%s\", \"size\": %u}", name, type, size);
    field_json(d, json);
    put_be(d->bytes, v, size);
}

static void f_u64(Dev *d, const char *name, guint64 v)
{
    f_int(d, name, "uint64", 8, v);
}

static void f_u32(Dev *d, const char *name, guint32 v)
{
    f_int(d, name, "uint32", 4, v);
}

static void f_array(Dev *d, const char *name, const char *type, guint size, const guint64 *v,
                    guint n)
{
    g_autofree char *json =
        g_strdup_printf("{\"name\": \"%s\", \"array_len\": %u, \"type\": \"%s\", \"size\": %u}",
                        name, n, type, size);
    field_json(d, json);
    for (guint i = 0; i < n; i++)
        put_be(d->bytes, v[i], size);
}

static void f_buffer(Dev *d, const char *name, guint8 fill, guint size)
{
    g_autofree char *json =
        g_strdup_printf("{\"name\": \"%s\", \"type\": \"buffer\", \"size\": %u}", name, size);
    field_json(d, json);
    for (guint i = 0; i < size; i++)
        ib_put_u8(d->bytes, fill);
}

#define SEGMENT_STRUCT                                                                             \
    "\"struct\": {\"vmsd_name\": \"segment\", \"version\": 1, \"fields\": ["                       \
    "{\"name\": \"selector\", \"type\": \"uint32\", \"size\": 4}, "                                \
    "{\"name\": \"base\", \"type\": \"uint64\", \"size\": 8}, "                                    \
    "{\"name\": \"limit\", \"type\": \"uint32\", \"size\": 4}, "                                   \
    "{\"name\": \"flags\", \"type\": \"uint32\", \"size\": 4}]}"

/* x86 SegmentCache (vmstate_segment): selector, base, limit, flags. */
static void f_segments(Dev *d, const char *name, const MrSegment *seg, guint n)
{
    g_autofree char *len = n > 1 ? g_strdup_printf(", \"array_len\": %u", n) : g_strdup("");
    g_autofree char *json = g_strdup_printf(
        "{\"name\": \"%s\"%s, \"type\": \"struct\", " SEGMENT_STRUCT ", \"size\": 20}", name, len);
    field_json(d, json);
    for (guint i = 0; i < n; i++) {
        put_be(d->bytes, seg[i].selector, 4);
        put_be(d->bytes, seg[i].base, 8);
        put_be(d->bytes, seg[i].limit, 4);
        put_be(d->bytes, seg[i].flags, 4);
    }
}

/* The VM description around the devices written so far. Returns: newly allocated. */
static char *vmdesc_of(const Dev *d)
{
    return g_strdup_printf("{\"page_size\": 4096, \"devices\": [%s]}", d->devices->str);
}

/* The spec's device state and description: @d's bytes and @json (both kept by the caller). */
static void use_devices(IbSpec *s, const Dev *d, const char *json)
{
    s->device_bytes = d->bytes->data;
    s->device_len = d->bytes->len;
    s->vmdesc_json = json;
}

/* A copy of @json with occurrence @nth (from 0) of @from replaced by @to, or NULL. */
static char *replace_nth(const char *json, const char *from, const char *to, guint nth)
{
    const char *p = json;
    for (guint i = 0; (p = strstr(p, from)) != NULL; i++, p += strlen(from))
        if (i == nth)
            return g_strdup_printf("%.*s%s%s", (int)(p - json), json, to, p + strlen(from));
    return NULL;
}

/* ---- register values ---- */

/* Distinct 64-bit values: every byte differs between registers and between CPUs. */
static guint64 mix(guint cpu, guint k)
{
    guint64 v = G_GUINT64_CONSTANT(0x9e3779b97f4a7c15) * (k + 1 + 97u * cpu);
    return v ^ (v >> 29) ^ G_GUINT64_CONSTANT(0x0123456789abcdef);
}

/* QEMU's env.regs order and segment order (target/i386/cpu.h R_*, R_ES…). */
enum { RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI };
enum { ES, CS, SS, DS, FS, GS };

typedef struct {
    guint64 gpr[16], rip, rflags;
    guint32 hflags;
    MrSegment seg[6], ldt, tr, gdt, idt;
    guint64 cr[5], efer, kgs;
} X86Regs;

static void segment_init(MrSegment *s, guint cpu, guint k)
{
    s->selector = (guint32)mix(cpu, k) & 0xfff8;
    s->base = mix(cpu, k + 1);
    s->limit = (guint32)mix(cpu, k + 2);
    s->flags = (guint32)(mix(cpu, k + 3) >> 32);
}

static void x86_regs(X86Regs *r, guint cpu)
{
    memset(r, 0, sizeof *r);
    for (guint i = 0; i < 16; i++)
        r->gpr[i] = mix(cpu, i);
    r->rip = mix(cpu, 20);
    r->rflags = mix(cpu, 21);
    /* hflags: CPL in the low two bits (3 for cpu 0, 0 for cpu 1) */
    r->hflags = ((guint32)mix(cpu, 22) & ~3u) | (cpu == 0 ? 3u : 0u);
    for (guint i = 0; i < 6; i++)
        segment_init(&r->seg[i], cpu, 30 + 4 * i);
    segment_init(&r->ldt, cpu, 60);
    segment_init(&r->tr, cpu, 64);
    segment_init(&r->gdt, cpu, 68);
    segment_init(&r->idt, cpu, 72);
    r->cr[0] = mix(cpu, 80);
    r->cr[2] = mix(cpu, 82);
    r->cr[3] = mix(cpu, 83);
    r->cr[4] = mix(cpu, 84);
    r->efer = mix(cpu, 85);
    r->kgs = mix(cpu, 86);
}

enum { OMIT_EIP = 1, OMIT_HFLAGS = 2 };

/* An x86 "cpu" section (target/i386/machine.c vmstate_x86_cpu, abridged): fields we read
 * among fields we do not (odd sizes, arrays), env.efer in a nested subsection and
 * env.kernelgsbase in the last subsection, so their offsets cross subsection headers. */
static void emit_x86_cpu(Dev *d, guint32 index, const X86Regs *r, guint omit)
{
    dev_begin(d, "cpu", index, 12);
    f_array(d, "env.regs", "uint64", 8, r->gpr, 16);
    if (!(omit & OMIT_EIP))
        f_u64(d, "env.eip", r->rip);
    f_u64(d, "env.eflags", r->rflags);
    if (!(omit & OMIT_HFLAGS))
        f_u32(d, "env.hflags", r->hflags);
    f_int(d, "env.fpuc", "uint16", 2, 0x037f);
    f_u32(d, "env.hflags2", 0x7e7e7e7e);
    f_segments(d, "env.segs", r->seg, 6);
    f_segments(d, "env.ldt", &r->ldt, 1);
    f_segments(d, "env.tr", &r->tr, 1);
    f_segments(d, "env.gdt", &r->gdt, 1);
    f_segments(d, "env.idt", &r->idt, 1);
    f_u32(d, "env.sysenter_cs", 0x05050505);
    f_u64(d, "env.cr[0]", r->cr[0]);
    f_u64(d, "env.cr[2]", r->cr[2]);
    f_u64(d, "env.cr[3]", r->cr[3]);
    f_u64(d, "env.cr[4]", r->cr[4]);
    const guint64 dr[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    f_array(d, "env.dr", "uint64", 8, dr, 8);
    f_buffer(d, "env.xmm_regs", 0x04, 37);
    sub_begin(d, "cpu/async_pf_msr", 1);
    f_u64(d, "env.async_pf_en_msr", G_GUINT64_CONSTANT(0x0505050505050505));
    sub_end(d);
    sub_begin(d, "cpu/msr_group", 2);
    f_u32(d, "env.msr_a", 0x7e000004);
    sub_begin(d, "cpu/msr_group/efer", 1);
    f_u64(d, "env.efer", r->efer);
    sub_end(d);
    sub_end(d);
    sub_begin(d, "cpu/kernelgsbase", 1);
    f_u64(d, "env.star", G_GUINT64_CONSTANT(0x0023001000000000));
    f_u64(d, "env.kernelgsbase", r->kgs);
    sub_end(d);
    dev_end(d);
}

/* Sections around the CPUs that we only walk. */
static void emit_timer(Dev *d)
{
    dev_begin(d, "timer", 0, 2);
    f_int(d, "cpu_ticks_offset", "int64", 8, G_GUINT64_CONSTANT(0x7e00000000000004));
    f_int(d, "dummy", "int64", 8, 0);
    sub_begin(d, "timer/cpu_clock_offset", 1);
    f_int(d, "cpu_clock_offset", "int64", 8, G_GUINT64_CONSTANT(0x0606060606060606));
    sub_end(d);
    dev_end(d);
}

static void emit_cpu_common(Dev *d, guint32 index)
{
    dev_begin(d, "cpu_common", index, 1);
    f_u32(d, "halted", 1);
    f_u32(d, "interrupt_request", 0);
    dev_end(d);
}

typedef struct {
    guint64 x[32], pc, sctlr, ttbr0, ttbr1, tcr;
    guint32 pstate;
} ArmRegs;

static void arm_regs(ArmRegs *r, guint cpu)
{
    for (guint i = 0; i < 32; i++)
        r->x[i] = mix(cpu, 100 + i);
    r->pc = mix(cpu, 140);
    r->pstate = (guint32)mix(cpu, 141);
    r->sctlr = mix(cpu, 142);
    r->ttbr0 = mix(cpu, 143);
    r->ttbr1 = mix(cpu, 144);
    r->tcr = mix(cpu, 145);
}

#define ARM_SCTLR_EL1 G_GUINT64_CONSTANT(0x603000000013c080)
#define ARM_TTBR0_EL1 G_GUINT64_CONSTANT(0x603000000013c100)
#define ARM_TTBR1_EL1 G_GUINT64_CONSTANT(0x603000000013c101)
#define ARM_TCR_EL1   G_GUINT64_CONSTANT(0x603000000013c102)

/* An aarch64 "cpu" section (target/arm/machine.c vmstate_arm_cpu, abridged): the AArch32
 * env.regs (uint32) come first and must not look like x86; the system registers sit in
 * the cpreg arrays among others, in no particular order. */
static void emit_arm_cpu(Dev *d, guint32 index, const ArmRegs *r, gboolean cpregs)
{
    dev_begin(d, "cpu", index, 22);
    const guint64 regs32[16] = {0};
    f_array(d, "env.regs", "uint32", 4, regs32, 16);
    f_array(d, "env.xregs", "uint64", 8, r->x, 32);
    f_u64(d, "env.pc", r->pc);
    f_int(d, "cpsr", "cpsr", 4, r->pstate);
    f_u32(d, "env.aarch64", 1);
    if (cpregs) {
        const guint64 idx[6] = {
            G_GUINT64_CONSTANT(0x603000000013c000), ARM_TCR_EL1,  ARM_SCTLR_EL1, ARM_TTBR1_EL1,
            G_GUINT64_CONSTANT(0x6030000000138010), ARM_TTBR0_EL1};
        const guint64 val[6] = {0x410fd083, r->tcr, r->sctlr, r->ttbr1, 0x7e7e, r->ttbr0};
        f_int(d, "cpreg_vmstate_array_len", "int32", 4, 6);
        f_array(d, "cpreg_vmstate_indexes", "int64", 8, idx, 6);
        f_array(d, "cpreg_vmstate_values", "uint64", 8, val, 6);
    }
    sub_begin(d, "cpu/vfp", 3);
    f_buffer(d, "env.vfp.zregs", 0x05, 64);
    sub_end(d);
    dev_end(d);
}

typedef struct {
    guint64 x[32], pc, satp, priv, mstatus;
} RvRegs;

static void rv_regs(RvRegs *r, guint cpu)
{
    for (guint i = 0; i < 32; i++)
        r->x[i] = mix(cpu, 200 + i);
    r->pc = mix(cpu, 240);
    r->satp = mix(cpu, 241);
    r->priv = 1 + cpu;
    r->mstatus = mix(cpu, 243);
}

/* A riscv64 "cpu" section without env.pc (target/riscv/machine.c vmstate_riscv_cpu has
 * it): no architecture we know. */
static void emit_rv_cpu(Dev *d, guint32 index, const RvRegs *r)
{
    dev_begin(d, "cpu", index, 10);
    f_array(d, "env.gpr", "uint64", 8, r->x, 32);
    const guint64 fpr[32] = {0};
    f_array(d, "env.fpr", "uint64", 8, fpr, 32);
    sub_begin(d, "cpu/pmp", 1);
    f_buffer(d, "env.pmp_state", 0x7e, 19);
    sub_end(d);
    dev_end(d);
}

/* A riscv64 "cpu" section (abridged), env.satp in the subsection after another. */
static void emit_rv_cpu_full(Dev *d, guint32 index, const RvRegs *r)
{
    dev_begin(d, "cpu", index, 10);
    f_array(d, "env.gpr", "uint64", 8, r->x, 32);
    const guint64 fpr[32] = {0};
    f_array(d, "env.fpr", "uint64", 8, fpr, 32);
    f_u64(d, "env.pc", r->pc);
    f_u64(d, "env.load_res", G_GUINT64_CONSTANT(0x0404040404040404));
    f_u64(d, "env.priv", r->priv);
    f_u64(d, "env.mstatus", r->mstatus);
    sub_begin(d, "cpu/pmp", 1);
    f_buffer(d, "env.pmp_state", 0x7e, 19);
    sub_end(d);
    sub_begin(d, "cpu/mmu", 1);
    f_u64(d, "env.satp", r->satp);
    sub_end(d);
    dev_end(d);
}

/* A PCI config space: vendor/device, @command, class VGA, BAR0 and BAR1. */
static void pci_config(guint8 *config, guint16 command, guint32 bar0, guint32 bar1)
{
    memset(config, 0, 256);
    config[0] = 0x34, config[1] = 0x12, config[2] = 0x11, config[3] = 0x11;
    config[4] = (guint8)command, config[5] = (guint8)(command >> 8);
    config[0x0a] = 0x00, config[0x0b] = 0x03;
    for (guint i = 0; i < 4; i++) {
        config[0x10 + i] = (guint8)(bar0 >> (8 * i));
        config[0x14 + i] = (guint8)(bar1 >> (8 * i));
    }
}

/* hw/display/vga-pci.c vmstate_vga_pci: "dev" (PCIDevice: version_id, config, irq_state),
 * then the VGA state. */
static void emit_vga(Dev *d, const guint8 *config, guint config_size)
{
    dev_begin(d, VGA_DEVICE, 0, 2);
    g_autofree char *json = g_strdup_printf(
        "{\"name\": \"dev\", \"type\": \"struct\", \"struct\": {\"vmsd_name\": \"PCIDevice\", "
        "\"version\": 2, \"fields\": [{\"name\": \"version_id\", \"type\": \"int32 le\", "
        "\"size\": 4}, {\"name\": \"config[0]\", \"type\": \"pci config\", \"size\": %u}, "
        "{\"name\": \"irq_state\", \"type\": \"pci irq state\", \"size\": 16}]}, \"size\": %u}",
        config_size, 20 + config_size);
    field_json(d, json);
    put_be(d->bytes, 2, 4);
    ib_put_bytes(d->bytes, config, config_size);
    for (guint i = 0; i < 16; i++)
        ib_put_u8(d->bytes, 0);
    f_buffer(d, "vga", 0x06, 100);
    dev_end(d);
}

/* ---- images ---- */

typedef struct {
    guint64 gpa, size;
    guint block;
    guint64 block_offset;
} Range;

static IbBlock *spec_block(const IbSpec *s, guint i)
{
    return g_ptr_array_index(s->blocks, i);
}

/* q35 with 2 MiB of pc.ram and a 128 KiB pc.bios, some data pages in each. */
static void x86_spec(IbSpec *s)
{
    ib_spec_init(s);
    s->machine_type = "pc-q35-10.0";
    IbBlock *ram = ib_add_block(s, "pc.ram", 2 * MiB, PS);
    ib_block_set_data(ram, 0, 1);
    ib_block_set_data(ram, 5, 1);
    ib_block_set_data(ram, 0x9f, 2); /* 0xa0: inside the VGA window, hidden */
    ib_block_set_data(ram, 0xc0, 1);
    ib_block_set_data(ram, 0x100, 4);
    ib_block_set_data(ram, 0x1ff, 1);
    IbBlock *bios = ib_add_block(s, "pc.bios", 128 * KiB, PS);
    ib_block_set_data(bios, 0, 1);
    ib_block_set_data(bios, 31, 1);
}

static const Range x86_ranges[] = {
    {0, 0xa0000, 0, 0},
    {0xc0000, 2 * MiB - 0xc0000, 0, 0xc0000},
    {0xfffe0000, 128 * KiB, 1, 0},
};

static MrImage *open_spec(IbSpec *s)
{
    g_autoptr(GBytes) bytes = ib_build_bytes(s);
    GError *error = NULL;
    MrImage *img = ib_open(bytes, &no_index, &error);
    assert_no_error(error);
    assert_non_null(img);
    return img;
}

static MrImage *open_sparse(IbSpec *s)
{
    GError *error = NULL;
    MrImage *img = ib_open_sparse(s, &no_index, &error);
    assert_no_error(error);
    assert_non_null(img);
    return img;
}

/* ---- reading results ---- */

static JsonNode *parse_json(const char *text, gsize len)
{
    g_autoptr(JsonParser) parser = json_parser_new();
    GError *error = NULL;
    if (!json_parser_load_from_data(parser, text, (gssize)len, &error))
        fail_msg("not JSON (%s):\n%.*s", error->message, (int)len, text);
    return json_node_copy(json_parser_get_root(parser));
}

/* The parsed cpus.json of @img (which must have one). */
static JsonNode *cpus_json(const MrImage *img)
{
    GBytes *bytes = mr_image_cpus_json(img);
    assert_non_null(bytes);
    gsize len;
    const char *text = g_bytes_get_data(bytes, &len);
    return parse_json(text, len);
}

/* The description's "device_state" member, as a new JSON node. */
static JsonNode *device_state(const MrImage *img)
{
    g_autofree char *text = mr_image_describe_json(img);
    g_autoptr(JsonNode) root = parse_json(text, strlen(text));
    JsonObject *o = json_node_get_object(root);
    assert_true(json_object_has_member(o, "device_state"));
    return json_node_copy(json_object_get_member(o, "device_state"));
}

static JsonObject *cpu_entry(JsonNode *root, guint i)
{
    JsonArray *cpus = json_object_get_array_member(json_node_get_object(root), "cpus");
    assert_true(i < json_array_get_length(cpus));
    return json_array_get_object_element(cpus, i);
}

#define assert_hex(obj, member, value) _assert_hex((obj), (member), (value), __FILE__, __LINE__)
static void _assert_hex(JsonObject *obj, const char *member, guint64 value, const char *file,
                        int line)
{
    if (!json_object_has_member(obj, member)) {
        print_error("%s:%d: no member \"%s\"\n", file, line, member);
        _fail(file, line);
    }
    g_autofree char *want = g_strdup_printf("0x%" G_GINT64_MODIFIER "x", value);
    _assert_string_equal(json_object_get_string_member(obj, member), want, file, line);
}

static void assert_segment(JsonObject *cpu, const char *name, const MrSegment *s, gboolean full)
{
    JsonObject *o = json_object_get_object_member(cpu, name);
    assert_non_null(o);
    assert_hex(o, "base", s->base);
    assert_hex(o, "limit", s->limit);
    if (full) {
        assert_hex(o, "selector", s->selector);
        assert_hex(o, "flags", s->flags);
    } else {
        assert_false(json_object_has_member(o, "selector"));
        assert_false(json_object_has_member(o, "flags"));
    }
    assert_int_equal(json_object_get_size(o), full ? 4 : 2);
}

static guint64 le(const guint8 *p, guint n)
{
    guint64 v = 0;
    for (guint i = n; i-- > 0;)
        v = v << 8 | p[i];
    return v;
}

static void pread_exact(const MrBlock *blk, void *buf, gsize len, guint64 off)
{
    GError *error = NULL;
    gssize n = mr_block_pread(blk, buf, len, off, &error);
    assert_no_error(error);
    assert_int_equal(n, len);
}

typedef struct {
    guint32 type;
    guint64 offset, vaddr, paddr, filesz, memsz;
} Phdr;

typedef struct {
    guint8 head[HEAD_BYTES]; /* the first bytes of the file */
    guint16 type, machine, phnum;
    Phdr ph[MAX_PHDRS];
} Elf;

/* The ELF header and program headers of physmem.elf, with the identity checked. */
static void read_elf(const MrBlock *blk, Elf *e)
{
    assert_true(mr_block_size(blk) >= HEAD_BYTES);
    pread_exact(blk, e->head, HEAD_BYTES, 0);
    static const guint8 ident[16] = {0x7f, 'E', 'L', 'F', 2, 1, 1};
    assert_memory_equal(e->head, ident, 16);
    e->type = (guint16)le(e->head + 16, 2);
    e->machine = (guint16)le(e->head + 18, 2);
    assert_int_equal(le(e->head + 20, 4), 1);         /* e_version */
    assert_int_equal(le(e->head + 32, 8), EHDR_SIZE); /* e_phoff */
    assert_int_equal(le(e->head + 40, 8), 0);         /* e_shoff */
    assert_int_equal(le(e->head + 54, 2), PHDR_SIZE); /* e_phentsize */
    e->phnum = (guint16)le(e->head + 56, 2);
    assert_true(e->phnum <= MAX_PHDRS);
    for (guint i = 0; i < e->phnum; i++) {
        const guint8 *p = e->head + EHDR_SIZE + i * PHDR_SIZE;
        e->ph[i] = (Phdr){(guint32)le(p, 4), le(p + 8, 8),  le(p + 16, 8),
                          le(p + 24, 8),     le(p + 32, 8), le(p + 40, 8)};
        assert_int_equal(le(p + 4, 4), 0);  /* p_flags */
        assert_int_equal(le(p + 48, 8), 0); /* p_align */
    }
}

typedef struct {
    char name[8];
    guint32 type, descsz;
    const guint8 *desc;
} Note;

/* The notes of the PT_NOTE segment (which must be the first program header). */
static guint read_notes(const Elf *e, Note *notes, guint max)
{
    assert_true(e->phnum > 0);
    assert_int_equal(e->ph[0].type, PT_NOTE);
    assert_int_equal(e->ph[0].paddr, 0);
    assert_int_equal(e->ph[0].filesz, e->ph[0].memsz);
    /* the notes follow the program headers */
    assert_int_equal(e->ph[0].offset, EHDR_SIZE + e->phnum * PHDR_SIZE);
    guint64 at = e->ph[0].offset, end = at + e->ph[0].filesz;
    assert_true(end <= HEAD_BYTES);
    guint n = 0;
    while (at < end) {
        assert_true(n < max);
        Note *note = &notes[n++];
        guint32 namesz = (guint32)le(e->head + at, 4);
        note->descsz = (guint32)le(e->head + at + 4, 4);
        note->type = (guint32)le(e->head + at + 8, 4);
        assert_int_equal(namesz, 5);
        memcpy(note->name, e->head + at + 12, 5);
        assert_int_equal(note->name[4], 0);
        note->desc = e->head + at + 12 + 8; /* the name padded to 4 */
        at += 12 + 8 + (note->descsz + 3) / 4 * 4;
    }
    assert_int_equal(at, end);
    return n;
}

/* An NT_PRSTATUS note: "CORE", type 1, pid = index + 1 at 32, @regs (LE) at 112, the rest
 * zero (elf_prstatus of the kernel, as QEMU's arch_dump.c fills it). */
static void assert_prstatus(const Note *note, guint32 index, const guint64 *regs, guint n)
{
    assert_string_equal(note->name, "CORE");
    assert_int_equal(note->type, 1);
    assert_int_equal(note->descsz, 112 + 8 * n + 8);
    for (guint i = 0; i < note->descsz; i++) {
        if (i >= 32 && i < 36) {
            assert_int_equal(le(note->desc + 32, 4), index + 1);
            i = 35;
        } else if (i >= 112 && i < 112 + 8 * n) {
            guint r = (i - 112) / 8;
            if (le(note->desc + i, 8) != regs[r])
                fail_msg("prstatus register %u is 0x%" G_GINT64_MODIFIER
                         "x, expected 0x%" G_GINT64_MODIFIER "x",
                         r, le(note->desc + i, 8), regs[r]);
            i += 7;
        } else if (note->desc[i] != 0) {
            fail_msg("prstatus byte %u is 0x%02x, expected 0", i, note->desc[i]);
        }
    }
}

static void x86_prstatus_regs(const X86Regs *r, guint64 *regs)
{
    const guint64 *g = r->gpr;
    const guint64 want[27] = {g[15],
                              g[14],
                              g[13],
                              g[12],
                              g[RBP],
                              g[RBX],
                              g[11],
                              g[10],
                              g[9], /* r15 … r9 */
                              g[8],
                              g[RAX],
                              g[RCX],
                              g[RDX],
                              g[RSI],
                              g[RDI], /* r8 … rdi */
                              0,      /* orig_rax */
                              r->rip,
                              r->seg[CS].selector,
                              r->rflags,
                              g[RSP],
                              r->seg[SS].selector,
                              r->seg[FS].base,
                              r->seg[GS].base, /* fs_base, gs_base */
                              r->seg[DS].selector,
                              r->seg[ES].selector,
                              r->seg[FS].selector,
                              r->seg[GS].selector};
    memcpy(regs, want, sizeof want);
}

/* QEMU's own x86 note: "QEMU", type 0, QEMUCPUState version 1 (target/i386/arch_dump.c). */
static void assert_qemu_note(const Note *note, const X86Regs *r)
{
    assert_string_equal(note->name, "QEMU");
    assert_int_equal(note->type, 0);
    assert_int_equal(note->descsz, 440);
    GByteArray *want = g_byte_array_new();
    guint8 b[8];
#define PUT(v, n)                                                                                  \
    do {                                                                                           \
        for (guint i_ = 0; i_ < (n); i_++)                                                         \
            b[i_] = (guint8)((guint64)(v) >> (8 * i_));                                            \
        g_byte_array_append(want, b, (n));                                                         \
    } while (0)
    PUT(1, 4);
    PUT(440, 4);
    const guint order[16] = {RAX, RBX, RCX, RDX, RSI, RDI, RSP, RBP, 8, 9, 10, 11, 12, 13, 14, 15};
    for (guint i = 0; i < 16; i++)
        PUT(r->gpr[order[i]], 8);
    PUT(r->rip, 8);
    PUT(r->rflags, 8);
    const MrSegment *segs[10] = {&r->seg[CS], &r->seg[DS], &r->seg[ES], &r->seg[FS], &r->seg[GS],
                                 &r->seg[SS], &r->ldt,     &r->tr,      &r->gdt,     &r->idt};
    for (guint i = 0; i < 10; i++) {
        PUT(segs[i]->selector, 4);
        PUT(segs[i]->limit, 4);
        PUT(segs[i]->flags, 4);
        PUT(0, 4);
        PUT(segs[i]->base, 8);
    }
    for (guint i = 0; i < 5; i++)
        PUT(r->cr[i], 8); /* cr[1] is 0 */
    PUT(r->kgs, 8);
#undef PUT
    assert_int_equal(want->len, 440);
    assert_memory_equal(note->desc, want->data, 440);
    g_byte_array_unref(want);
}

/* The PT_LOADs (program headers 1.. after a PT_NOTE, or 0..) are @ranges, page-aligned and
 * back to back after the header pages; their bytes are physmem.raw's and the spec's; and
 * SEEK_DATA/SEEK_HOLE over the whole file follow the header pages, then each range's data
 * pages. */
static void check_loads(const IbSpec *s, const MrImage *img, const Elf *e, guint first,
                        const Range *ranges, guint n)
{
    const MrBlock *elf = mr_image_elfcore(img), *phys = mr_image_physmem(img);
    assert_non_null(phys);
    assert_int_equal(e->phnum, first + n);
    assert_int_equal(mr_physmem_n_ranges(img), n);
    guint64 offset =
        (EHDR_SIZE + e->phnum * PHDR_SIZE + (first ? e->ph[0].filesz : 0) + PS - 1) / PS * PS;
    guint64 head_pages = offset / PS;
    for (guint i = 0; i < n; i++) {
        const Phdr *p = &e->ph[first + i];
        guint64 gpa, len;
        mr_physmem_range(img, i, &gpa, &len);
        assert_int_equal(gpa, ranges[i].gpa);
        assert_int_equal(len, ranges[i].size);
        assert_int_equal(p->type, PT_LOAD);
        assert_int_equal(p->paddr, ranges[i].gpa);
        assert_int_equal(p->vaddr, ranges[i].gpa);
        assert_int_equal(p->filesz, ranges[i].size);
        assert_int_equal(p->memsz, ranges[i].size);
        assert_int_equal(p->offset, offset);
        assert_int_equal(p->offset % PS, 0);
        offset += (ranges[i].size + PS - 1) / PS * PS;
    }
    assert_int_equal(mr_block_size(elf), offset);
    /* the model: which pages of the file are data */
    guint64 n_pages = offset / PS;
    g_autofree guint8 *data = g_malloc0(n_pages);
    memset(data, 1, head_pages);
    guint64 data_pages = head_pages;
    for (guint i = 0; i < n; i++) {
        const IbBlock *b = spec_block(s, ranges[i].block);
        guint64 first_page = e->ph[first + i].offset / PS;
        for (guint64 k = 0; k < (ranges[i].size + PS - 1) / PS; k++) {
            data[first_page + k] = b->data[(ranges[i].block_offset + k * PS) / PS];
            data_pages += data[first_page + k];
        }
    }
    assert_int_equal(mr_block_data_pages(elf), data_pages);
    /* the first data (hole) page at or after each page, n_pages if none */
    g_autofree guint64 *next_data = g_new(guint64, n_pages + 1);
    g_autofree guint64 *next_hole = g_new(guint64, n_pages + 1);
    next_data[n_pages] = next_hole[n_pages] = n_pages;
    for (guint64 p = n_pages; p-- > 0;) {
        next_data[p] = data[p] ? p : next_data[p + 1];
        next_hole[p] = data[p] ? next_hole[p + 1] : p;
    }
    for (guint64 p = 0; p < n_pages; p++) {
        for (guint64 off = p * PS; off < (p + 1) * PS; off += PS / 2 + 123) {
            if (next_data[p] < n_pages)
                assert_extent_equal(elf, off, MR_SEEK_DATA, MAX(off, next_data[p] * PS));
            else
                assert_seek_no_more(elf, off, MR_SEEK_DATA);
            assert_extent_equal(elf, off, MR_SEEK_HOLE, MAX(off, next_hole[p] * PS));
        }
    }
    assert_seek_no_more(elf, offset, MR_SEEK_DATA);
    assert_seek_no_more(elf, offset, MR_SEEK_HOLE);
    /* the bytes: physmem.raw at the GPA, and what the spec put in the block */
    const gsize chunk = 64 * KiB;
    g_autofree guint8 *a = g_malloc(chunk);
    g_autofree guint8 *b = g_malloc(chunk);
    for (guint i = 0; i < n; i++) {
        for (guint64 x = 0; x < ranges[i].size; x += chunk) {
            gsize len = (gsize)MIN((guint64)chunk, ranges[i].size - x);
            pread_exact(elf, a, len, e->ph[first + i].offset + x);
            pread_exact(phys, b, len, ranges[i].gpa + x);
            assert_memory_equal(a, b, len);
            for (gsize k = 0; k < len; k += 97)
                assert_int_equal(
                    a[k], ib_expected_byte(s, ranges[i].block, ranges[i].block_offset + x + k));
        }
    }
    /* one read across the header page into the first range */
    guint8 across[32];
    pread_exact(elf, across, sizeof across, e->ph[first].offset - 16);
    for (guint k = 0; k < 16; k++)
        assert_int_equal(across[k], 0);
    pread_exact(phys, b, 16, ranges[0].gpa);
    assert_memory_equal(across + 16, b, 16);
}

/* ---- x86 ---- */

static void x86_two_cpus(Dev *d, X86Regs *r)
{
    dev_init(d);
    emit_timer(d);
    for (guint i = 0; i < 2; i++) {
        x86_regs(&r[i], i);
        emit_cpu_common(d, i);
        emit_x86_cpu(d, i, &r[i], 0);
    }
}

static void assert_x86_cpu(JsonObject *o, guint index, const X86Regs *r)
{
    static const char *const gpr[16] = {"rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
                                        "r8",  "r9",  "r10", "r11", "r12", "r13", "r14", "r15"};
    static const char *const seg[6] = {"es", "cs", "ss", "ds", "fs", "gs"};
    assert_int_equal(json_object_get_int_member(o, "index"), index);
    for (guint i = 0; i < 16; i++)
        assert_hex(o, gpr[i], r->gpr[i]);
    assert_hex(o, "rip", r->rip);
    assert_hex(o, "rflags", r->rflags);
    assert_int_equal(json_object_get_int_member(o, "cpl"), r->hflags & 3);
    for (guint i = 0; i < 6; i++)
        assert_segment(o, seg[i], &r->seg[i], TRUE);
    assert_segment(o, "ldt", &r->ldt, TRUE);
    assert_segment(o, "tr", &r->tr, TRUE);
    assert_segment(o, "gdt", &r->gdt, FALSE);
    assert_segment(o, "idt", &r->idt, FALSE);
    assert_hex(o, "cr0", r->cr[0]);
    assert_hex(o, "cr2", r->cr[2]);
    assert_hex(o, "cr3", r->cr[3]);
    assert_hex(o, "cr4", r->cr[4]);
    assert_hex(o, "efer", r->efer);
    assert_hex(o, "kernel_gs_base", r->kgs);
    assert_false(json_object_has_member(o, "cr1"));
    /* index, 16 gprs, rip, rflags, cpl, 10 segments, 4 crs, efer, kernel_gs_base */
    assert_int_equal(json_object_get_size(o), 1 + 16 + 3 + 10 + 4 + 2);
}

static void test_x86_cpus(void **state)
{
    (void)state;
    Dev d;
    X86Regs r[2];
    x86_two_cpus(&d, r);
    g_autofree char *json = vmdesc_of(&d);
    IbSpec s;
    x86_spec(&s);
    use_devices(&s, &d, json);
    g_autoptr(MrImage) img = open_spec(&s);

    g_autoptr(JsonNode) ds = device_state(img);
    JsonObject *dso = json_node_get_object(ds);
    assert_int_equal(json_object_get_int_member(dso, "sections"), 5);
    assert_int_equal(json_object_get_int_member(dso, "cpus"), 2);
    assert_string_equal(json_object_get_string_member(dso, "arch"), "x86_64");
    assert_false(json_object_has_member(dso, "error"));

    g_autoptr(JsonNode) cpus = cpus_json(img);
    JsonObject *root = json_node_get_object(cpus);
    assert_string_equal(json_object_get_string_member(root, "arch"), "x86_64");
    assert_int_equal(json_array_get_length(json_object_get_array_member(root, "cpus")), 2);
    assert_x86_cpu(cpu_entry(cpus, 0), 0, &r[0]);
    assert_x86_cpu(cpu_entry(cpus, 1), 1, &r[1]);
    assert_int_equal(json_object_get_int_member(cpu_entry(cpus, 0), "cpl"), 3);
    assert_int_equal(json_object_get_int_member(cpu_entry(cpus, 1), "cpl"), 0);

    /* the devices are found by name and instance, at their payloads */
    assert_int_equal(mr_devstate_n_devices(img), 5);
    const MrDevice *cpu1 = mr_devstate_find(img, "cpu", 1);
    assert_non_null(cpu1);
    assert_ptr_equal(cpu1, mr_devstate_device(img, 4));
    assert_null(mr_devstate_find(img, "cpu", 2));
    assert_null(mr_devstate_find(img, "cpu_common", 7));
    guint64 value;
    assert_true(mr_device_read_be(img, cpu1, "env.segs", 5, "limit", &value));
    assert_int_equal(value, r[1].seg[GS].limit);
    assert_true(mr_device_read_be(img, cpu1, "env.fpuc", 0, NULL, &value));
    assert_int_equal(value, 0x037f);
    assert_false(mr_device_read_be(img, cpu1, "env.regs", 16, NULL, &value));    /* past the end */
    assert_false(mr_device_read_be(img, cpu1, "env.xmm_regs", 0, NULL, &value)); /* 37 bytes */
    assert_false(mr_device_read_be(img, cpu1, "env.nothing", 0, NULL, &value));
    assert_false(mr_device_read_be(img, cpu1, "env.segs", 0, "nothing", &value));
    assert_false(mr_device_read_be(img, cpu1, "env.eip", 0, "selector", &value)); /* no struct */

    dev_clear(&d);
    ib_spec_clear(&s);
}

static void test_x86_elfcore(void **state)
{
    (void)state;
    Dev d;
    X86Regs r[2];
    x86_two_cpus(&d, r);
    g_autofree char *json = vmdesc_of(&d);
    IbSpec s;
    x86_spec(&s);
    use_devices(&s, &d, json);
    g_autoptr(MrImage) img = open_spec(&s);

    const MrBlock *elf = mr_image_elfcore(img);
    assert_non_null(elf);
    g_autofree Elf *e = g_new0(Elf, 1);
    read_elf(elf, e);
    assert_int_equal(e->type, 4); /* ET_CORE */
    assert_int_equal(e->machine, EM_X86_64);
    assert_int_equal(e->phnum, 1 + G_N_ELEMENTS(x86_ranges));
    Note notes[8];
    assert_int_equal(read_notes(e, notes, 8), 4);
    /* every NT_PRSTATUS first, then every QEMU note (dump.c write_elf64_notes) */
    for (guint i = 0; i < 2; i++) {
        guint64 regs[27];
        x86_prstatus_regs(&r[i], regs);
        assert_prstatus(&notes[i], i, regs, 27);
        assert_int_equal(notes[i].descsz, 336);
        assert_qemu_note(&notes[2 + i], &r[i]);
    }
    assert_int_equal(e->ph[0].filesz, 2 * (20 + 336) + 2 * (20 + 440));
    check_loads(&s, img, e, 1, x86_ranges, G_N_ELEMENTS(x86_ranges));

    dev_clear(&d);
    ib_spec_clear(&s);
}

/* One vCPU: one NT_PRSTATUS, one QEMU note, pid 1. */
static void test_x86_one_cpu(void **state)
{
    (void)state;
    Dev d;
    dev_init(&d);
    X86Regs r;
    x86_regs(&r, 5);
    emit_x86_cpu(&d, 0, &r, 0);
    emit_timer(&d);
    g_autofree char *json = vmdesc_of(&d);
    IbSpec s;
    x86_spec(&s);
    use_devices(&s, &d, json);
    g_autoptr(MrImage) img = open_spec(&s);
    g_autoptr(JsonNode) cpus = cpus_json(img);
    assert_x86_cpu(cpu_entry(cpus, 0), 0, &r);
    g_autofree Elf *e = g_new0(Elf, 1);
    read_elf(mr_image_elfcore(img), e);
    Note notes[4];
    assert_int_equal(read_notes(e, notes, 4), 2);
    guint64 regs[27];
    x86_prstatus_regs(&r, regs);
    assert_prstatus(&notes[0], 0, regs, 27);
    assert_qemu_note(&notes[1], &r);
    check_loads(&s, img, e, 1, x86_ranges, G_N_ELEMENTS(x86_ranges));
    dev_clear(&d);
    ib_spec_clear(&s);
}

/* ---- aarch64 and riscv64 ---- */

static void test_aarch64(void **state)
{
    (void)state;
    Dev d;
    dev_init(&d);
    ArmRegs r[2];
    emit_timer(&d);
    for (guint i = 0; i < 2; i++) {
        arm_regs(&r[i], i);
        emit_arm_cpu(&d, i, &r[i], TRUE);
    }
    g_autofree char *json = vmdesc_of(&d);
    IbSpec s;
    ib_spec_init(&s);
    s.machine_type = "virt-10.0";
    IbBlock *ram = ib_add_block(&s, "mach-virt.ram", MiB, PS);
    ib_block_set_data(ram, 0, 2);
    ib_block_set_data(ram, 100, 1);
    ib_block_set_data(ram, 255, 1);
    use_devices(&s, &d, json);
    g_autoptr(MrImage) img = open_spec(&s);

    g_autoptr(JsonNode) ds = device_state(img);
    JsonObject *dso = json_node_get_object(ds);
    assert_int_equal(json_object_get_int_member(dso, "sections"), 3);
    assert_int_equal(json_object_get_int_member(dso, "cpus"), 2);
    assert_string_equal(json_object_get_string_member(dso, "arch"), "aarch64");
    assert_false(json_object_has_member(dso, "error"));

    g_autoptr(JsonNode) cpus = cpus_json(img);
    assert_string_equal(json_object_get_string_member(json_node_get_object(cpus), "arch"),
                        "aarch64");
    for (guint c = 0; c < 2; c++) {
        JsonObject *o = cpu_entry(cpus, c);
        assert_int_equal(json_object_get_int_member(o, "index"), c);
        assert_hex(o, "pc", r[c].pc);
        assert_hex(o, "sp", r[c].x[31]);
        assert_hex(o, "pstate", r[c].pstate);
        for (guint i = 0; i < 31; i++) {
            char name[8];
            g_snprintf(name, sizeof name, "x%u", i);
            assert_hex(o, name, r[c].x[i]);
        }
        assert_false(json_object_has_member(o, "x31"));
        assert_hex(o, "sctlr_el1", r[c].sctlr);
        assert_hex(o, "ttbr0_el1", r[c].ttbr0);
        assert_hex(o, "ttbr1_el1", r[c].ttbr1);
        assert_hex(o, "tcr_el1", r[c].tcr);
        assert_int_equal(json_object_get_size(o), 1 + 3 + 31 + 4);
    }

    g_autofree Elf *e = g_new0(Elf, 1);
    read_elf(mr_image_elfcore(img), e);
    assert_int_equal(e->type, 4);
    assert_int_equal(e->machine, EM_AARCH64);
    Note notes[4];
    assert_int_equal(read_notes(e, notes, 4), 2); /* no QEMU notes outside x86 */
    for (guint c = 0; c < 2; c++) {
        guint64 regs[34]; /* aarch64 user_pt_regs: x0..x30, sp, pc, pstate */
        memcpy(regs, r[c].x, 32 * 8);
        regs[32] = r[c].pc;
        regs[33] = r[c].pstate;
        assert_prstatus(&notes[c], c, regs, 34);
        assert_int_equal(notes[c].descsz, 392);
    }
    const Range ranges[] = {{0x40000000, MiB, 0, 0}};
    check_loads(&s, img, e, 1, ranges, 1);
    dev_clear(&d);
    ib_spec_clear(&s);
}

/* Without the cpreg arrays there are no system registers, and no error. */
static void test_aarch64_no_sysregs(void **state)
{
    (void)state;
    Dev d;
    dev_init(&d);
    ArmRegs r;
    arm_regs(&r, 3);
    emit_arm_cpu(&d, 0, &r, FALSE);
    g_autofree char *json = vmdesc_of(&d);
    IbSpec s;
    ib_spec_init(&s);
    s.machine_type = "virt-10.0";
    ib_add_block(&s, "mach-virt.ram", 64 * KiB, PS);
    use_devices(&s, &d, json);
    g_autoptr(MrImage) img = open_spec(&s);
    g_autoptr(JsonNode) cpus = cpus_json(img);
    JsonObject *o = cpu_entry(cpus, 0);
    assert_hex(o, "pc", r.pc);
    assert_hex(o, "x30", r.x[30]);
    assert_false(json_object_has_member(o, "sctlr_el1"));
    assert_false(json_object_has_member(o, "ttbr0_el1"));
    assert_int_equal(json_object_get_size(o), 1 + 3 + 31);
    dev_clear(&d);
    ib_spec_clear(&s);
}

static void test_riscv64(void **state)
{
    (void)state;
    Dev d;
    dev_init(&d);
    RvRegs r[2];
    for (guint i = 0; i < 2; i++) {
        rv_regs(&r[i], i);
        emit_rv_cpu_full(&d, i, &r[i]);
    }
    emit_timer(&d);
    g_autofree char *json = vmdesc_of(&d);
    IbSpec s;
    ib_spec_init(&s);
    s.machine_type = "virt-10.0";
    IbBlock *ram = ib_add_block(&s, "riscv_virt_board.ram", MiB, PS);
    ib_block_set_data(ram, 1, 1);
    ib_block_set_data(ram, 200, 3);
    use_devices(&s, &d, json);
    g_autoptr(MrImage) img = open_spec(&s);

    g_autoptr(JsonNode) ds = device_state(img);
    JsonObject *dso = json_node_get_object(ds);
    assert_int_equal(json_object_get_int_member(dso, "cpus"), 2);
    assert_string_equal(json_object_get_string_member(dso, "arch"), "riscv64");

    g_autoptr(JsonNode) cpus = cpus_json(img);
    assert_string_equal(json_object_get_string_member(json_node_get_object(cpus), "arch"),
                        "riscv64");
    for (guint c = 0; c < 2; c++) {
        JsonObject *o = cpu_entry(cpus, c);
        assert_hex(o, "pc", r[c].pc);
        assert_hex(o, "sp", r[c].x[2]);
        assert_hex(o, "satp", r[c].satp);
        assert_hex(o, "priv", r[c].priv);
        assert_hex(o, "mstatus", r[c].mstatus);
        for (guint i = 0; i < 32; i++) {
            char name[8];
            g_snprintf(name, sizeof name, "x%u", i);
            assert_hex(o, name, r[c].x[i]);
        }
        assert_int_equal(json_object_get_size(o), 1 + 5 + 32);
    }

    g_autofree Elf *e = g_new0(Elf, 1);
    read_elf(mr_image_elfcore(img), e);
    assert_int_equal(e->machine, EM_RISCV);
    Note notes[4];
    assert_int_equal(read_notes(e, notes, 4), 2);
    for (guint c = 0; c < 2; c++) {
        guint64 regs[32]; /* riscv user_regs_struct: pc, x1..x31 */
        memcpy(regs, r[c].x, sizeof regs);
        regs[0] = r[c].pc;
        assert_prstatus(&notes[c], c, regs, 32);
        assert_int_equal(notes[c].descsz, 376);
    }
    const Range ranges[] = {{0x80000000, MiB, 0, 0}};
    check_loads(&s, img, e, 1, ranges, 1);
    dev_clear(&d);
    ib_spec_clear(&s);
}

/* ---- bad device state: the image opens, the views lose the registers ---- */

/* The image opened with its blocks and physmem; the description's device_state names the
 * reason (every word of @words, NULL-terminated); no cpus.json; physmem.elf has only
 * PT_LOADs. */
#define assert_devstate_error(s, img, sections, ...)                                               \
    do {                                                                                           \
        const char *const words_[] = {__VA_ARGS__, NULL};                                          \
        _assert_devstate_error((s), (img), (sections), words_, __FILE__, __LINE__);                \
    } while (0)
static void _assert_devstate_error(const IbSpec *s, const MrImage *img, gint64 sections,
                                   const char *const *words, const char *file, int line)
{
    _assert_int_equal(mr_image_n_blocks(img), s->blocks->len, file, line);
    _assert_true(mr_image_physmem(img) != NULL, "physmem", file, line);
    _assert_true(mr_image_cpus_json(img) == NULL, "no cpus.json", file, line);
    g_autoptr(JsonNode) ds = device_state(img);
    JsonObject *o = json_node_get_object(ds);
    if (!json_object_has_member(o, "error")) {
        print_error("%s:%d: device_state has no error\n", file, line);
        _fail(file, line);
    }
    const char *error = json_object_get_string_member(o, "error");
    for (guint i = 0; words[i] != NULL; i++) {
        if (strstr(error, words[i]) == NULL) {
            print_error("%s:%d: device_state error \"%s\" lacks \"%s\"\n", file, line, error,
                        words[i]);
            _fail(file, line);
        }
    }
    _assert_int_equal(json_object_get_int_member(o, "cpus"), 0, file, line);
    if (sections >= 0)
        _assert_int_equal(json_object_get_int_member(o, "sections"), sections, file, line);
    _assert_true(!json_object_has_member(o, "arch"), "no arch", file, line);
    const MrBlock *elf = mr_image_elfcore(img);
    _assert_true(elf != NULL, "physmem.elf", file, line);
    g_autofree Elf *e = g_new0(Elf, 1);
    read_elf(elf, e);
    _assert_int_equal(e->phnum, mr_physmem_n_ranges(img), file, line);
    for (guint i = 0; i < e->phnum; i++)
        _assert_int_equal(e->ph[i].type, PT_LOAD, file, line);
    _assert_int_equal(e->ph[0].offset, PS, file, line);
}

/* Open the x86 spec (x86_spec) with @d's sections and the description @json. */
static MrImage *open_x86(IbSpec *s, const Dev *d, const char *json)
{
    x86_spec(s);
    use_devices(s, d, json);
    return open_spec(s);
}

static void test_subsection_mismatch(void **state)
{
    (void)state;
    Dev d;
    X86Regs r[2];
    x86_two_cpus(&d, r);
    g_autofree char *json = vmdesc_of(&d);
    IbSpec s;
    /* the name the description gives is not the one sent */
    g_autofree char *renamed = replace_nth(json, "\"cpu/kernelgsbase\"", "\"cpu/kernelgsbasf\"", 1);
    assert_non_null(renamed);
    MrImage *img = open_x86(&s, &d, renamed);
    assert_devstate_error(&s, img, 0, "cpu", "subsection", "cpu/kernelgsbasf", "not where");
    mr_image_free(img);
    ib_spec_clear(&s);
    /* nor its version */
    g_autofree char *version = replace_nth(json, "\"cpu/msr_group\", \"version\": 2",
                                           "\"cpu/msr_group\", \"version\": 3", 0);
    assert_non_null(version);
    img = open_x86(&s, &d, version);
    assert_devstate_error(&s, img, 0, "subsection", "cpu/msr_group");
    mr_image_free(img);
    ib_spec_clear(&s);
    /* a subsection the description has but the stream does not */
    g_autofree char *extra = replace_nth(
        json, "\"subsections\": [",
        "\"subsections\": [{\"vmsd_name\": \"timer/x\", \"version\": 1, \"fields\": []}, ", 0);
    img = open_x86(&s, &d, extra);
    assert_devstate_error(&s, img, 0, "\"timer\"", "subsection \"timer/x\"");
    mr_image_free(img);
    ib_spec_clear(&s);
    dev_clear(&d);
}

static void test_payload_length(void **state)
{
    (void)state;
    IbSpec s;
    X86Regs r;
    x86_regs(&r, 0);
    for (guint variant = 0; variant < 5; variant++) {
        Dev d;
        dev_init(&d);
        emit_timer(&d);
        /* cpu_common: its payload is longer (0..1) or shorter (2..4) than described */
        dev_begin(&d, "cpu_common", 0, 1);
        f_u32(&d, "halted", 1);
        if (variant == 0)
            dev_raw(&d, "\x7e", 1); /* looks like a footer, but at the wrong place */
        else if (variant == 1)
            dev_raw(&d, "\x11\x11\x11\x11", 4);
        else if (variant == 2)
            field_json(&d, "{\"name\": \"x\", \"type\": \"uint8\", \"size\": 1}");
        else if (variant == 3)
            field_json(&d, "{\"name\": \"x\", \"type\": \"uint32\", \"size\": 4}");
        else /* exactly the footer's five bytes */
            field_json(&d, "{\"name\": \"x\", \"type\": \"buffer\", \"size\": 5}");
        dev_end(&d);
        emit_x86_cpu(&d, 0, &r, 0);
        g_autofree char *json = vmdesc_of(&d);
        MrImage *img = open_x86(&s, &d, json);
        assert_devstate_error(&s, img, 0, "\"cpu_common\"", "does not end at its footer");
        mr_image_free(img);
        ib_spec_clear(&s);
        dev_clear(&d);
    }
    /* the last section: a payload running into the EOF marker and the description */
    Dev d;
    dev_init(&d);
    d.footers = FALSE; /* (with footers, the footer check would see it first) */
    emit_x86_cpu(&d, 0, &r, 0);
    dev_begin(&d, "serial", 0, 1);
    f_u32(&d, "x", 1);
    field_json(&d, "{\"name\": \"y\", \"type\": \"buffer\", \"size\": 64}");
    dev_end(&d);
    g_autofree char *json = vmdesc_of(&d);
    MrImage *img = open_x86(&s, &d, json);
    assert_devstate_error(&s, img, 0, "\"serial\"", "runs into the VM description");
    mr_image_free(img);
    ib_spec_clear(&s);
    dev_clear(&d);
}

static void test_not_described(void **state)
{
    (void)state;
    Dev d;
    dev_init(&d);
    emit_timer(&d);
    d.hide = TRUE;
    emit_cpu_common(&d, 0);
    X86Regs r;
    x86_regs(&r, 0);
    emit_x86_cpu(&d, 0, &r, 0);
    g_autofree char *json = vmdesc_of(&d);
    assert_null(strstr(json, "cpu_common"));
    IbSpec s;
    g_autoptr(MrImage) img = open_x86(&s, &d, json);
    assert_devstate_error(&s, img, 0, "\"cpu_common\"", "sent but not described");
    ib_spec_clear(&s);

    dev_clear(&d);

    /* described, but with another instance id */
    dev_init(&d);
    emit_timer(&d);
    emit_x86_cpu(&d, 0, &r, 0);
    g_autofree char *json2 = vmdesc_of(&d);
    g_autofree char *other = replace_nth(json2, "\"instance_id\": 0", "\"instance_id\": 1", 1);
    assert_non_null(other);
    g_autoptr(MrImage) img2 = open_x86(&s, &d, other);
    assert_devstate_error(&s, img2, 0, "\"cpu\"", "not described");
    ib_spec_clear(&s);
    dev_clear(&d);
}

/* JSON text nested @depth arrays deep (balanced). Returns: newly allocated. */
static char *nested(guint depth)
{
    GString *out = g_string_new(NULL);
    for (guint i = 0; i < depth; i++)
        g_string_append_c(out, '[');
    for (guint i = 0; i < depth; i++)
        g_string_append_c(out, ']');
    return g_string_free(out, FALSE);
}

static void test_deep_nesting(void **state)
{
    (void)state;
    Dev d;
    X86Regs r[2];
    x86_two_cpus(&d, r);
    g_autofree char *json = vmdesc_of(&d);
    g_autofree char *deep = nested(100);
    g_autofree char *member = g_strdup_printf("\"vmsd_name\": \"cpu\", \"x\": %s, ", deep);
    g_autofree char *bad = replace_nth(json, "\"vmsd_name\": \"cpu\", ", member, 1);
    assert_non_null(bad);
    IbSpec s;
    MrImage *img = open_x86(&s, &d, bad);
    assert_devstate_error(&s, img, 0, "VM description", "nested deeper than 64");
    mr_image_free(img);
    ib_spec_clear(&s);

    /* 60 levels are fine (the real ones nest 6 deep) */
    g_autofree char *ok_deep = nested(58);
    g_autofree char *ok_member = g_strdup_printf("\"vmsd_name\": \"cpu\", \"x\": %s, ", ok_deep);
    g_autofree char *fine = replace_nth(json, "\"vmsd_name\": \"cpu\", ", ok_member, 1);
    img = open_x86(&s, &d, fine);
    assert_non_null(mr_image_cpus_json(img));
    mr_image_free(img);
    ib_spec_clear(&s);

    /* brackets inside strings do not count, escaped quotes do not end them */
    g_autofree char *in_string =
        replace_nth(json, "\"vmsd_name\": \"cpu\", ",
                    "\"vmsd_name\": \"cpu\", \"x\": \"\\\"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["
                    "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\", ",
                    1);
    img = open_x86(&s, &d, in_string);
    assert_non_null(mr_image_cpus_json(img));
    mr_image_free(img);
    ib_spec_clear(&s);
    dev_clear(&d);
}

/* json-glib (1.6) also takes C comments and single-quoted strings, and recurses with no limit
 * of its own: brackets hidden from the depth check in a comment, or behind a quote it reads
 * differently, must not let a deep nesting through to the parser (a stack overflow). */
static void test_nesting_hidden_from_depth_check(void **state)
{
    (void)state;
    Dev d;
    X86Regs r[2];
    x86_two_cpus(&d, r);
    g_autofree char *json = vmdesc_of(&d);
    const guint depth = 300000;
    GString *comment = g_string_new("\"vmsd_name\": \"cpu\", \"x\": /* ");
    for (guint i = 0; i < depth; i++)
        g_string_append_c(comment, ']');
    g_string_append(comment, " */ ");
    g_autofree char *deep = nested(depth);
    g_string_append(comment, deep);
    g_string_append(comment, ", ");
    g_autofree char *comment_str = g_string_free(comment, FALSE);
    g_autofree char *with_comment = replace_nth(json, "\"vmsd_name\": \"cpu\", ", comment_str, 1);
    IbSpec s;
    MrImage *img = open_x86(&s, &d, with_comment);
    assert_devstate_error(&s, img, 0, "VM description");
    mr_image_free(img);
    ib_spec_clear(&s);

    /* '"' read as a string by json-glib: the depth check would see a string start there */
    g_autofree char *quoted_str =
        g_strdup_printf("\"vmsd_name\": \"cpu\", \"x\": ['\"', %s], ", deep);
    g_autofree char *with_quote = replace_nth(json, "\"vmsd_name\": \"cpu\", ", quoted_str, 1);
    img = open_x86(&s, &d, with_quote);
    assert_devstate_error(&s, img, 0, "VM description");
    mr_image_free(img);
    ib_spec_clear(&s);
    dev_clear(&d);
}

/* "size" and "array_len" must be JSON integers within bounds. */
static void test_bad_numbers(void **state)
{
    (void)state;
    Dev d;
    X86Regs r[2];
    x86_two_cpus(&d, r);
    g_autofree char *json = vmdesc_of(&d);
    static const char *const sizes[] = {
        "1e3",  "-1",  "\"8\"", "1099511627776",       "8.0", "null",
        "true", "[8]", "{}",    "18446744073709551616"};
    for (gsize i = 0; i < G_N_ELEMENTS(sizes); i++) {
        g_autofree char *to = g_strdup_printf("\"name\": \"env.eip\", \"type\": \"uint64\", "
                                              "\"size\": %s}",
                                              sizes[i]);
        g_autofree char *bad =
            replace_nth(json, "\"name\": \"env.eip\", \"type\": \"uint64\", \"size\": 8}", to, 1);
        assert_non_null(bad);
        IbSpec s;
        MrImage *img = open_x86(&s, &d, bad);
        assert_devstate_error(&s, img, 0, "\"cpu\"", "a field without a valid size");
        mr_image_free(img);
        ib_spec_clear(&s);
    }
    static const char *const lens[] = {"1e3", "-1", "\"16\"", "1099511627776", "16.5", "null"};
    for (gsize i = 0; i < G_N_ELEMENTS(lens); i++) {
        g_autofree char *to = g_strdup_printf("\"array_len\": %s", lens[i]);
        g_autofree char *bad = replace_nth(json, "\"array_len\": 16", to, 0);
        assert_non_null(bad);
        IbSpec s;
        MrImage *img = open_x86(&s, &d, bad);
        assert_devstate_error(&s, img, 0, "\"cpu\"", "a field without a valid size");
        mr_image_free(img);
        ib_spec_clear(&s);
    }
    /* within bounds but larger than the file: the walk runs out of bytes */
    g_autofree char *big =
        replace_nth(json, "\"array_len\": 16, \"type\": \"uint64\", \"size\": 8",
                    "\"array_len\": 16777216, \"type\": \"uint64\", \"size\": 4294967296", 1);
    assert_non_null(big);
    IbSpec s;
    MrImage *img = open_x86(&s, &d, big);
    assert_devstate_error(&s, img, 0, "device state", "truncated");
    mr_image_free(img);
    ib_spec_clear(&s);
    /* a bad size in a struct member we read: that CPU's registers cannot be read */
    g_autofree char *member =
        replace_nth(json, "{\"name\": \"limit\", \"type\": \"uint32\", \"size\": 4}",
                    "{\"name\": \"limit\", \"type\": \"uint32\", \"size\": 1099511627776}", 0);
    img = open_x86(&s, &d, member);
    assert_devstate_error(&s, img, 5, "cpu 0", "env.segs");
    mr_image_free(img);
    ib_spec_clear(&s);
    dev_clear(&d);
}

static void test_cpu_fields_missing(void **state)
{
    (void)state;
    X86Regs r;
    x86_regs(&r, 0);
    IbSpec s;
    /* without env.eip the layout is no architecture we know */
    Dev d;
    dev_init(&d);
    emit_x86_cpu(&d, 0, &r, 0);
    emit_x86_cpu(&d, 1, &r, OMIT_EIP);
    g_autofree char *json = vmdesc_of(&d);
    MrImage *img = open_x86(&s, &d, json);
    assert_devstate_error(&s, img, 2, "cpu 1", "register layout");
    mr_image_free(img);
    ib_spec_clear(&s);
    dev_clear(&d);
    /* an x86 CPU without env.hflags: the field is named */
    dev_init(&d);
    emit_x86_cpu(&d, 0, &r, OMIT_HFLAGS);
    g_autofree char *json2 = vmdesc_of(&d);
    img = open_x86(&s, &d, json2);
    assert_devstate_error(&s, img, 1, "cpu 0", "env.hflags");
    mr_image_free(img);
    ib_spec_clear(&s);
    dev_clear(&d);
    /* no cpu sections at all */
    dev_init(&d);
    emit_timer(&d);
    g_autofree char *json3 = vmdesc_of(&d);
    img = open_x86(&s, &d, json3);
    assert_devstate_error(&s, img, 1, "no cpu sections");
    mr_image_free(img);
    ib_spec_clear(&s);
    dev_clear(&d);
    /* a riscv CPU without env.pc is no architecture either */
    dev_init(&d);
    RvRegs rv;
    rv_regs(&rv, 0);
    emit_rv_cpu(&d, 0, &rv);
    g_autofree char *json4 = vmdesc_of(&d);
    img = open_x86(&s, &d, json4);
    assert_devstate_error(&s, img, 1, "cpu 0", "register layout");
    mr_image_free(img);
    ib_spec_clear(&s);
    dev_clear(&d);
}

static void test_mixed_arch(void **state)
{
    (void)state;
    Dev d;
    dev_init(&d);
    X86Regs x;
    x86_regs(&x, 0);
    ArmRegs a;
    arm_regs(&a, 1);
    emit_x86_cpu(&d, 0, &x, 0);
    emit_arm_cpu(&d, 1, &a, TRUE);
    g_autofree char *json = vmdesc_of(&d);
    IbSpec s;
    g_autoptr(MrImage) img = open_x86(&s, &d, json);
    assert_devstate_error(&s, img, 2, "cpu 1", "register layout");
    /* the machine is still told by the CPUs that were read first */
    g_autofree Elf *e = g_new0(Elf, 1);
    read_elf(mr_image_elfcore(img), e);
    assert_int_equal(e->machine, EM_X86_64);
    ib_spec_clear(&s);
    dev_clear(&d);
}

/* No footers at all (send-section-footer off, old machine types) is fine. */
static void test_no_footers(void **state)
{
    (void)state;
    Dev d;
    dev_init(&d);
    d.footers = FALSE;
    X86Regs r;
    x86_regs(&r, 1);
    emit_timer(&d);
    emit_x86_cpu(&d, 0, &r, 0);
    g_autofree char *json = vmdesc_of(&d);
    IbSpec s;
    g_autoptr(MrImage) img = open_x86(&s, &d, json);
    g_autoptr(JsonNode) cpus = cpus_json(img);
    assert_x86_cpu(cpu_entry(cpus, 0), 0, &r);
    ib_spec_clear(&s);
    dev_clear(&d);
}

/* ---- VGA BAR0 ---- */

/* q35 with 16 MiB of pc.ram and a 16 MiB VGA vram block; the vga device's config space
 * as given. */
static MrImage *open_vga(IbSpec *s, Dev *d, char **json, guint16 command, guint32 bar0,
                         guint32 bar1)
{
    ib_spec_init(s);
    s->machine_type = "pc-q35-10.0";
    IbBlock *ram = ib_add_block(s, "pc.ram", 16 * MiB, PS);
    ib_block_set_data(ram, 0, 1);
    ib_block_set_data(ram, 4095, 1);
    IbBlock *vram = ib_add_block(s, VGA_BLOCK, 16 * MiB, PS);
    ib_block_set_data(vram, 0, 2);
    ib_block_set_data(vram, 4095, 1);
    dev_init(d);
    guint8 config[256];
    pci_config(config, command, bar0, bar1);
    X86Regs r;
    x86_regs(&r, 0);
    emit_x86_cpu(d, 0, &r, 0);
    emit_vga(d, config, 256);
    *json = vmdesc_of(d);
    use_devices(s, d, *json);
    return open_sparse(s);
}

static void assert_no_vga(IbSpec *s, Dev *d, guint16 command, guint32 bar0, guint32 bar1)
{
    g_autofree char *json = NULL;
    g_autoptr(MrImage) img = open_vga(s, d, &json, command, bar0, bar1);
    assert_non_null(mr_image_cpus_json(img));
    assert_int_equal(mr_physmem_n_ranges(img), 2);
    assert_null(strstr(mr_image_physmem_about(img), "vga"));
    assert_string_equal(mr_image_physmem_about(img), "q35: pc.ram [0, 0x1000000) below 4 GiB");
    ib_spec_clear(s);
    dev_clear(d);
}

static void test_vga_bar(void **state)
{
    (void)state;
    IbSpec s;
    Dev d;
    g_autofree char *json = NULL;
    g_autoptr(MrImage) img = open_vga(&s, &d, &json, 0x0003, 0xfd000008, 0);
    const Range ranges[] = {{0, 0xa0000, 0, 0},
                            {0xc0000, 16 * MiB - 0xc0000, 0, 0xc0000},
                            {0xfd000000, 16 * MiB, 1, 0}};
    assert_string_equal(mr_image_physmem_about(img),
                        "q35: pc.ram [0, 0x1000000) below 4 GiB, " VGA_BLOCK " at BAR0 0xfd000000");
    g_autofree Elf *e = g_new0(Elf, 1);
    read_elf(mr_image_elfcore(img), e);
    assert_int_equal(e->phnum, 1 + 3);
    check_loads(&s, img, e, 1, ranges, 3);
    /* physmem.raw shows the vram at the BAR */
    guint8 buf[64];
    pread_exact(mr_image_physmem(img), buf, sizeof buf, 0xfd000000 + PS - 32);
    for (guint k = 0; k < sizeof buf; k++)
        assert_int_equal(buf[k], ib_expected_byte(&s, 1, PS - 32 + k));
    assert_extent_equal(mr_image_physmem(img), 16 * MiB, MR_SEEK_DATA, 0xfd000000);
    ib_spec_clear(&s);
    dev_clear(&d);

    /* memory decoding off; BAR0 on top of RAM; an IO BAR; an unaligned BAR; no BAR */
    assert_no_vga(&s, &d, 0x0001, 0xfd000008, 0);
    assert_no_vga(&s, &d, 0x0003, 0x00100000, 0);
    assert_no_vga(&s, &d, 0x0003, 0xfd000001, 0);
    assert_no_vga(&s, &d, 0x0003, 0xfd000800, 0);
    assert_no_vga(&s, &d, 0x0003, 0, 0);
}

/* A 64-bit BAR (type 10) takes its high half from BAR1. */
static void test_vga_bar_64(void **state)
{
    (void)state;
    IbSpec s;
    Dev d;
    g_autofree char *json = NULL;
    g_autoptr(MrImage) img = open_vga(&s, &d, &json, 0x0002, 0x0000000c, 0x8);
    const Range ranges[] = {
        {0, 0xa0000, 0, 0}, {0xc0000, 16 * MiB - 0xc0000, 0, 0xc0000}, {32 * GiB, 16 * MiB, 1, 0}};
    assert_string_equal(mr_image_physmem_about(img),
                        "q35: pc.ram [0, 0x1000000) below 4 GiB, " VGA_BLOCK
                        " at BAR0 0x800000000");
    g_autofree Elf *e = g_new0(Elf, 1);
    read_elf(mr_image_elfcore(img), e);
    check_loads(&s, img, e, 1, ranges, 3);
    assert_int_equal(mr_block_size(mr_image_physmem(img)), 32 * GiB + 16 * MiB);
    ib_spec_clear(&s);
    dev_clear(&d);

    /* type 10 with BAR1 zero: a 64-bit BAR below 4 GiB */
    g_autofree char *json2 = NULL;
    g_autoptr(MrImage) low = open_vga(&s, &d, &json2, 0x0003, 0xe000000c, 0);
    assert_int_equal(mr_physmem_n_ranges(low), 3);
    guint64 gpa, len;
    mr_physmem_range(low, 2, &gpa, &len);
    assert_int_equal(gpa, 0xe0000000);
    assert_int_equal(len, 16 * MiB);
    ib_spec_clear(&s);
    dev_clear(&d);

    /* a 32-bit BAR (type 00) ignores BAR1 */
    g_autofree char *json3 = NULL;
    g_autoptr(MrImage) bar32 = open_vga(&s, &d, &json3, 0x0003, 0xe0000008, 0x8);
    mr_physmem_range(bar32, 2, &gpa, &len);
    assert_int_equal(gpa, 0xe0000000);
    ib_spec_clear(&s);
    dev_clear(&d);

    /* a 64-bit BAR far above any RAM would make the view (and its page bitmap) absurdly
     * large: left out, and the image opens */
    assert_no_vga(&s, &d, 0x0003, 0x0000000c, 0xff000000);
    assert_no_vga(&s, &d, 0x0003, 0xff00000c, 0xffffffff);
}

/* A vga device whose config field is not 256 bytes, or that the description lacks. */
static void test_vga_odd_device(void **state)
{
    (void)state;
    IbSpec s;
    ib_spec_init(&s);
    s.machine_type = "pc-q35-10.0";
    ib_add_block(&s, "pc.ram", 16 * MiB, PS);
    ib_add_block(&s, VGA_BLOCK, 16 * MiB, PS);
    Dev d;
    dev_init(&d);
    guint8 config[256];
    pci_config(config, 0x0003, 0xfd000008, 0);
    emit_vga(&d, config, 64);
    g_autofree char *json = vmdesc_of(&d);
    use_devices(&s, &d, json);
    g_autoptr(MrImage) img = open_sparse(&s);
    assert_int_equal(mr_physmem_n_ranges(img), 2);
    /* no cpu: an error, but the rest of the device state was walked */
    g_autoptr(JsonNode) ds = device_state(img);
    assert_int_equal(json_object_get_int_member(json_node_get_object(ds), "sections"), 1);
    dev_clear(&d);

    /* the device at instance 1 is not the one the vram block names */
    dev_init(&d);
    dev_begin(&d, VGA_DEVICE, 1, 2);
    f_buffer(&d, "dev", 0, 276);
    dev_end(&d);
    g_autofree char *json2 = vmdesc_of(&d);
    use_devices(&s, &d, json2);
    g_autoptr(MrImage) img2 = open_sparse(&s);
    assert_int_equal(mr_physmem_n_ranges(img2), 2);
    dev_clear(&d);
    ib_spec_clear(&s);
}

/* ---- robustness ---- */

/* Whatever the damage: the image opens, and either the device state is followed (cpus.json
 * and the ELF notes exist) or the description says why (neither exists). */
static void check_consistent(GByteArray *bytes, const char *what, gsize at)
{
    GError *error = NULL;
    g_autoptr(MrImage) img = ib_open_array(bytes, &no_index, &error);
    if (img == NULL)
        fail_msg("%s %" G_GSIZE_FORMAT ": open failed: %s", what, at, error->message);
    g_autoptr(JsonNode) ds = device_state(img);
    gboolean has_error = json_object_has_member(json_node_get_object(ds), "error");
    GBytes *cpus = mr_image_cpus_json(img);
    if (has_error == (cpus != NULL))
        fail_msg("%s %" G_GSIZE_FORMAT ": error %d but cpus.json %p", what, at, has_error,
                 (void *)cpus);
    if (cpus != NULL)
        json_node_unref(cpus_json(img));
    const MrBlock *elf = mr_image_elfcore(img);
    assert_non_null(elf);
    g_autofree Elf *e = g_new0(Elf, 1);
    read_elf(elf, e);
    assert_int_equal(e->ph[0].type == PT_NOTE, cpus != NULL);
    if (cpus != NULL) {
        Note notes[8];
        assert_true(read_notes(e, notes, 8) > 0);
    }
}

/* The flip image: small q35, a timer, two x86 CPUs, and a vga device with a 64-bit BAR
 * over a small vram block. */
static void flip_spec(IbSpec *s, Dev *d, char **json)
{
    ib_spec_init(s);
    s->machine_type = "pc-q35-10.0";
    IbBlock *ram = ib_add_block(s, "pc.ram", 256 * KiB, PS);
    ib_block_set_data(ram, 0, 1);
    IbBlock *vram = ib_add_block(s, VGA_BLOCK, 64 * KiB, PS);
    ib_block_set_data(vram, 1, 1);
    dev_init(d);
    emit_timer(d);
    X86Regs r;
    for (guint i = 0; i < 2; i++) {
        x86_regs(&r, i);
        emit_x86_cpu(d, i, &r, 0);
    }
    guint8 config[256];
    pci_config(config, 0x0007, 0xfd00000c, 0x1);
    emit_vga(d, config, 256);
    *json = vmdesc_of(d);
    use_devices(s, d, *json);
}

static void test_flip_every_byte(void **state)
{
    (void)state;
    IbSpec s;
    Dev d;
    g_autofree char *json = NULL;
    flip_spec(&s, &d, &json);
    GByteArray *base = ib_build(&s);
    {
        g_autoptr(GBytes) bytes = g_bytes_new(base->data, base->len);
        g_autoptr(MrImage) img = assert_open_ok_opts(bytes, &no_index);
        assert_non_null(mr_image_cpus_json(img));
        assert_int_equal(mr_physmem_n_ranges(img), 2); /* pc.ram, and vram at 0x1fd000000 */
    }
    assert_int_equal(s.eof_offset - s.device_offset, d.bytes->len);
    for (guint64 at = s.device_offset; at < s.eof_offset; at++) {
        base->data[at] ^= 0xff;
        check_consistent(base, "byte", at);
        base->data[at] ^= 0xff;
    }
    g_byte_array_unref(base);
    ib_spec_clear(&s);
    dev_clear(&d);
}

static void test_damaged_description(void **state)
{
    (void)state;
    IbSpec s;
    Dev d;
    g_autofree char *json = NULL;
    flip_spec(&s, &d, &json);
    /* cut short (and closed, so that it is still found as the description) */
    const gsize len = strlen(json);
    for (gsize cut = 1; cut < len; cut += 1 + cut / 16) {
        g_autofree char *cut_json = g_strdup_printf("%.*s}", (int)cut, json);
        s.vmdesc_json = cut_json;
        GByteArray *bytes = ib_build(&s);
        check_consistent(bytes, "cut", cut);
        g_byte_array_unref(bytes);
    }
    /* every size and every array_len replaced by other values */
    static const char *const keys[] = {"\"size\": ", "\"array_len\": "};
    static const char *const values[] = {"0",
                                         "1",
                                         "3",
                                         "7",
                                         "9",
                                         "255",
                                         "-1",
                                         "1e3",
                                         "\"8\"",
                                         "null",
                                         "4294967296",
                                         "1099511627776",
                                         "9223372036854775807",
                                         "{}",
                                         "8.0"};
    for (gsize k = 0; k < G_N_ELEMENTS(keys); k++) {
        for (guint nth = 0;; nth++) {
            g_autofree char *probe = replace_nth(json, keys[k], keys[k], nth);
            if (probe == NULL)
                break;
            for (gsize v = 0; v < G_N_ELEMENTS(values); v++) {
                /* replace the number after the key */
                const char *p = json;
                for (guint i = 0; i <= nth; i++)
                    p = strstr(i ? p + 1 : p, keys[k]);
                const char *num = p + strlen(keys[k]);
                gsize num_len = strspn(num, "0123456789");
                g_autofree char *changed =
                    g_strdup_printf("%.*s%s%s", (int)(num - json), json, values[v], num + num_len);
                s.vmdesc_json = changed;
                GByteArray *bytes = ib_build(&s);
                check_consistent(bytes, keys[k], nth);
                g_byte_array_unref(bytes);
            }
        }
    }
    ib_spec_clear(&s);
    dev_clear(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_x86_cpus),
        cmocka_unit_test(test_x86_elfcore),
        cmocka_unit_test(test_x86_one_cpu),
        cmocka_unit_test(test_aarch64),
        cmocka_unit_test(test_aarch64_no_sysregs),
        cmocka_unit_test(test_riscv64),
        cmocka_unit_test(test_subsection_mismatch),
        cmocka_unit_test(test_payload_length),
        cmocka_unit_test(test_not_described),
        cmocka_unit_test(test_deep_nesting),
        cmocka_unit_test(test_nesting_hidden_from_depth_check),
        cmocka_unit_test(test_bad_numbers),
        cmocka_unit_test(test_cpu_fields_missing),
        cmocka_unit_test(test_mixed_arch),
        cmocka_unit_test(test_no_footers),
        cmocka_unit_test(test_vga_bar),
        cmocka_unit_test(test_vga_bar_64),
        cmocka_unit_test(test_vga_odd_device),
        cmocka_unit_test(test_flip_every_byte),
        cmocka_unit_test(test_damaged_description),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
