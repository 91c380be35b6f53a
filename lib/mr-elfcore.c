/* mr-elfcore.c: the guest-physical view as an ELF core, the way `dump-guest-memory`
 * (paging=false) writes one (qemu-save-formats.md §8): ET_CORE, a PT_NOTE with one
 * NT_PRSTATUS per vCPU (and on x86 QEMU's own CPU-state note), then one PT_LOAD per
 * guest-physical range of physmem.raw. Only the headers and notes are held in memory; the
 * PT_LOAD data is read through the guest-physical view, so the file is served like every
 * block: a bitmap (header pages, then the view's bits range by range) drives reads,
 * SEEK_DATA/SEEK_HOLE and st_blocks.
 *
 * Differences from QEMU's file, on purpose: the PT_LOAD data starts at a page boundary (so
 * every range is page-aligned and mmap-friendly), there are no section headers (QEMU's
 * only name .shstrtab), and an x86 guest is always described as x86-64 with 64-bit notes. */
#include "mr-private.h"

#include <string.h>

#define ET_CORE     4
#define EV_CURRENT  1
#define PT_LOAD     1
#define PT_NOTE     4
#define NT_PRSTATUS 1
#define NT_QEMU     0
#define EM_X86_64   62
#define EM_AARCH64  183
#define EM_RISCV    243
#define EHDR_SIZE   64
#define PHDR_SIZE   56

/* Notes as QEMU's target/<arch>/arch_dump.c lay them out: elf_prstatus is 32 bytes of
 * signal info, pid, 76 bytes of ids and times, the registers, 8 bytes of fpvalid/pad. */
#define PRSTATUS_PID_OFFSET  32
#define PRSTATUS_REGS_OFFSET 112
#define PRSTATUS_TAIL        8
#define QEMU_CPUSTATE_SIZE   440 /* x86 QEMUCPUState, version 1 */

typedef struct {
    guint64 gpa, len, file_offset;
} Load;

typedef struct {
    GBytes *head; /* ELF header, program headers, notes */
    GArray *loads;
    const MrBlock *physmem;
} ElfView;

static void put(GByteArray *b, guint64 v, guint bytes) /* little-endian */
{
    for (guint i = 0; i < bytes; i++) {
        guint8 byte = (guint8)(v >> (8 * i));
        g_byte_array_append(b, &byte, 1);
    }
}

static void put_zeros(GByteArray *b, guint n)
{
    static const guint8 zeros[128];
    for (; n > 0; n -= MIN(n, sizeof zeros))
        g_byte_array_append(b, zeros, MIN(n, sizeof zeros));
}

/* One note: Elf64_Nhdr, the name padded to 4, the descriptor (4-byte padded, as dump.c). */
static void note_start(GByteArray *b, const char *name, guint32 type, guint32 desc_size)
{
    guint32 namesz = (guint32)strlen(name) + 1;
    put(b, namesz, 4);
    put(b, desc_size, 4);
    put(b, type, 4);
    g_byte_array_append(b, (const guint8 *)name, namesz);
    put_zeros(b, (4 - namesz % 4) % 4);
}

static void prstatus(GByteArray *b, const MrCpu *cpu, const guint64 *regs, guint n_regs)
{
    note_start(b, "CORE", NT_PRSTATUS, PRSTATUS_REGS_OFFSET + n_regs * 8 + PRSTATUS_TAIL);
    put_zeros(b, PRSTATUS_PID_OFFSET);
    put(b, cpu->index + 1, 4); /* dump.c: the pid is cpu_index + 1 */
    put_zeros(b, PRSTATUS_REGS_OFFSET - PRSTATUS_PID_OFFSET - 4);
    for (guint i = 0; i < n_regs; i++)
        put(b, regs[i], 8);
    put_zeros(b, PRSTATUS_TAIL);
}

/* QEMU's env.regs order: rax rcx rdx rbx rsp rbp rsi rdi r8..r15. */
enum { RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI };
enum { ES, CS, SS, DS, FS, GS };

/* x86_64_user_regs_struct (target/i386/arch_dump.c x86_64_write_elf64_note). */
static void x86_prstatus(GByteArray *b, const MrCpu *cpu)
{
    const guint64 *r = cpu->gpr;
    /* orig_rax is 0 in QEMU's note (it has no syscall context to report) */
    guint64 regs[27] = {r[15],
                        r[14],
                        r[13],
                        r[12],
                        r[RBP],
                        r[RBX],
                        r[11],
                        r[10],
                        r[9],
                        r[8],
                        r[RAX],
                        r[RCX],
                        r[RDX],
                        r[RSI],
                        r[RDI],
                        0,
                        cpu->pc,
                        cpu->seg[CS].selector,
                        cpu->flags,
                        r[RSP],
                        cpu->seg[SS].selector,
                        cpu->seg[FS].base,
                        cpu->seg[GS].base,
                        cpu->seg[DS].selector,
                        cpu->seg[ES].selector,
                        cpu->seg[FS].selector,
                        cpu->seg[GS].selector};
    prstatus(b, cpu, regs, G_N_ELEMENTS(regs));
}

static void qemu_segment(GByteArray *b, const MrSegment *s)
{
    put(b, s->selector, 4);
    put(b, s->limit, 4);
    put(b, s->flags, 4);
    put(b, 0, 4);
    put(b, s->base, 8);
}

/* QEMUCPUState (target/i386/arch_dump.c qemu_get_cpustate), note "QEMU" type 0. */
static void x86_qemu_note(GByteArray *b, const MrCpu *cpu)
{
    const guint64 *r = cpu->gpr;
    static const guint order[16] = {RAX, RBX, RCX, RDX, RSI, RDI, RSP, RBP,
                                    8,   9,   10,  11,  12,  13,  14,  15};
    note_start(b, "QEMU", NT_QEMU, QEMU_CPUSTATE_SIZE);
    put(b, 1, 4); /* version */
    put(b, QEMU_CPUSTATE_SIZE, 4);
    for (guint i = 0; i < 16; i++)
        put(b, r[order[i]], 8);
    put(b, cpu->pc, 8);
    put(b, cpu->flags, 8);
    static const guint segs[6] = {CS, DS, ES, FS, GS, SS};
    for (guint i = 0; i < 6; i++)
        qemu_segment(b, &cpu->seg[segs[i]]);
    qemu_segment(b, &cpu->ldt);
    qemu_segment(b, &cpu->tr);
    qemu_segment(b, &cpu->gdt);
    qemu_segment(b, &cpu->idt);
    for (guint i = 0; i < 5; i++)
        put(b, cpu->cr[i], 8);
    put(b, cpu->kernel_gs_base, 8);
}

/* aarch64_user_regs: x0..x30, sp, pc, pstate (target/arm/arch_dump.c). QEMU also writes
 * FP/SVE notes and sets pr_fpvalid; we have no FP note, so pr_fpvalid stays 0. */
static void aarch64_prstatus(GByteArray *b, const MrCpu *cpu)
{
    guint64 regs[34];
    memcpy(regs, cpu->gpr, 32 * sizeof(guint64));
    regs[32] = cpu->pc;
    regs[33] = cpu->flags;
    prstatus(b, cpu, regs, G_N_ELEMENTS(regs));
}

/* riscv64_user_regs: pc, then x1..x31 (target/riscv/arch_dump.c). */
static void riscv64_prstatus(GByteArray *b, const MrCpu *cpu)
{
    guint64 regs[32];
    memcpy(regs, cpu->gpr, sizeof regs);
    regs[0] = cpu->pc;
    prstatus(b, cpu, regs, G_N_ELEMENTS(regs));
}

/* dump.c write_elf64_notes: every CPU's NT_PRSTATUS, then every CPU's QEMU note. */
static GByteArray *build_notes(const MrImage *img)
{
    GByteArray *b = g_byte_array_new();
    const GArray *cpus = img->cpus;
    for (guint i = 0; cpus != NULL && i < cpus->len; i++) {
        const MrCpu *cpu = &g_array_index(cpus, MrCpu, i);
        if (img->arch == MR_ARCH_X86_64)
            x86_prstatus(b, cpu);
        else if (img->arch == MR_ARCH_AARCH64)
            aarch64_prstatus(b, cpu);
        else if (img->arch == MR_ARCH_RISCV64)
            riscv64_prstatus(b, cpu);
    }
    for (guint i = 0; img->arch == MR_ARCH_X86_64 && cpus != NULL && i < cpus->len; i++)
        x86_qemu_note(b, &g_array_index(cpus, MrCpu, i));
    return b;
}

/* The machine the core describes: the CPUs' architecture, else the view's main block. */
static guint16 elf_machine(const MrImage *img)
{
    MrArch arch = img->arch;
    if (arch == MR_ARCH_NONE)
        arch = mr_physmem_arch(img);
    switch (arch) {
    case MR_ARCH_AARCH64:
        return EM_AARCH64;
    case MR_ARCH_RISCV64:
        return EM_RISCV;
    default:
        return EM_X86_64;
    }
}

static void put_ehdr(GByteArray *b, guint16 machine, guint16 phnum)
{
    static const guint8 ident[16] = {
        0x7f, 'E', 'L', 'F', 2 /* ELFCLASS64 */, 1 /* ELFDATA2LSB */, EV_CURRENT};
    g_byte_array_append(b, ident, sizeof ident);
    put(b, ET_CORE, 2);
    put(b, machine, 2);
    put(b, EV_CURRENT, 4);
    put(b, 0, 8);         /* e_entry */
    put(b, EHDR_SIZE, 8); /* e_phoff */
    put(b, 0, 8);         /* e_shoff: no section headers */
    put(b, 0, 4);         /* e_flags */
    put(b, EHDR_SIZE, 2);
    put(b, PHDR_SIZE, 2);
    put(b, phnum, 2);
    put(b, 64, 2); /* e_shentsize */
    put(b, 0, 2);  /* e_shnum */
    put(b, 0, 2);  /* e_shstrndx */
}

static void put_phdr(GByteArray *b, guint32 type, guint64 offset, guint64 paddr, guint64 size)
{
    put(b, type, 4);
    put(b, 0, 4); /* p_flags: 0, as dump-guest-memory writes */
    put(b, offset, 8);
    put(b, paddr, 8); /* p_vaddr = p_paddr without paging */
    put(b, paddr, 8);
    put(b, size, 8);
    put(b, size, 8);
    put(b, 0, 8); /* p_align */
}

static gboolean elfview_read_data(const MrBlock *blk, guint8 *buf, guint64 offset, gsize len,
                                  GError **error)
{
    const ElfView *v = blk->priv;
    gsize head_len;
    const guint8 *head = g_bytes_get_data(v->head, &head_len);
    const Load *first = &g_array_index(v->loads, Load, 0);
    if (offset < first->file_offset) { /* header pages: the header, then zeros */
        gsize step = (gsize)MIN((guint64)len, first->file_offset - offset);
        gsize from_head = offset < head_len ? MIN(step, head_len - (gsize)offset) : 0;
        memcpy(buf, head + offset, from_head);
        memset(buf + from_head, 0, step - from_head);
        buf += step, offset += step, len -= step;
    }
    for (guint i = 0; i < v->loads->len && len > 0; i++) {
        const Load *l = &g_array_index(v->loads, Load, i);
        guint64 end = i + 1 < v->loads->len ? (l + 1)->file_offset : blk->size;
        guint64 span = end - l->file_offset;
        if (offset < l->file_offset || offset >= l->file_offset + span)
            continue;
        gsize step = (gsize)MIN((guint64)len, l->file_offset + span - offset);
        guint64 in_load = offset - l->file_offset;
        gsize data = in_load < l->len ? (gsize)MIN((guint64)step, l->len - in_load) : 0;
        if (data > 0 && !v->physmem->ops->read_data(v->physmem, buf, l->gpa + in_load, data, error))
            return FALSE;
        memset(buf + data, 0, step - data); /* page padding after a range that is not whole */
        buf += step, offset += step, len -= step;
    }
    return TRUE;
}

static const MrBlockOps elfview_ops = {
    .read_data = elfview_read_data,
};

static void elfview_free(gpointer data)
{
    ElfView *v = data;
    g_bytes_unref(v->head);
    g_array_unref(v->loads);
    g_free(v);
}

/* Header pages are data; each range's pages are data where the view's are. */
static void build_bitmap(MrBlock *elf, const ElfView *v)
{
    guint64 *words = g_new0(guint64, MAX((elf->n_pages + 63) / 64, 1));
    guint32 page = elf->page_size;
    guint64 head_pages = g_array_index(v->loads, Load, 0).file_offset / page;
    for (guint64 p = 0; p < head_pages; p++)
        words[p / 64] |= G_GUINT64_CONSTANT(1) << (p % 64);
    for (guint i = 0; i < v->loads->len; i++) {
        const Load *l = &g_array_index(v->loads, Load, i);
        guint64 src = l->gpa / page;
        /* next_set_until stops at the view's last bit: a limit past it would never end. */
        guint64 end = MIN(src + (l->len + page - 1) / page, v->physmem->bitmap.n_bits);
        for (guint64 p = mr_bitmap_next_set_until(&v->physmem->bitmap, src, end); p < end;
             p = mr_bitmap_next_set_until(&v->physmem->bitmap, p + 1, end)) {
            guint64 bit = l->file_offset / page + (p - src);
            words[bit / 64] |= G_GUINT64_CONSTANT(1) << (bit % 64);
        }
    }
    mr_bitmap_init_host(&elf->bitmap, words, elf->n_pages);
}

void mr_elfcore_build(MrImage *img)
{
    const MrBlock *physmem = img->physmem;
    guint n = physmem ? mr_physmem_n_ranges(img) : 0;
    if (n == 0 || n > G_MAXUINT16 - 2) /* more would need PN_XNUM and section headers */
        return;
    g_autoptr(GByteArray) notes = build_notes(img);
    guint16 phnum = (guint16)(n + (notes->len > 0));
    guint64 notes_offset = EHDR_SIZE + (guint64)phnum * PHDR_SIZE;
    guint32 page = physmem->page_size;
    guint64 offset = (notes_offset + notes->len + page - 1) / page * page;
    ElfView *v = g_new0(ElfView, 1);
    v->physmem = physmem;
    v->loads = g_array_sized_new(FALSE, FALSE, sizeof(Load), n);
    GByteArray *head = g_byte_array_new();
    put_ehdr(head, elf_machine(img), phnum);
    if (notes->len > 0)
        put_phdr(head, PT_NOTE, notes_offset, 0, notes->len);
    for (guint i = 0; i < n; i++) {
        Load l;
        mr_physmem_range(img, i, &l.gpa, &l.len);
        l.file_offset = offset;
        g_array_append_val(v->loads, l);
        put_phdr(head, PT_LOAD, l.file_offset, l.gpa, l.len);
        offset += (l.len + page - 1) / page * page;
    }
    g_byte_array_append(head, notes->data, notes->len);
    v->head = g_byte_array_free_to_bytes(head);
    MrBlock *elf = mr_block_new();
    memcpy(elf->idstr, "elfcore", 7);
    elf->idstr_len = 7;
    elf->page_size = page;
    elf->size = offset;
    elf->n_pages = offset / page;
    elf->src = img->src;
    elf->ops = &elfview_ops;
    elf->priv = v;
    elf->priv_free = elfview_free;
    build_bitmap(elf, v);
    img->elfcore = elf;
}
