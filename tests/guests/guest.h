/* Freestanding helpers for rvmm's C test guests: COM1 output and input by
 * polling, and little-endian reads of boot structures. */
#ifndef RVMM_GUEST_H
#define RVMM_GUEST_H

typedef unsigned long u64;
typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned char u8;

#define KIND_LINUX64 0
#define KIND_PVH 1

#define COM1 0x3f8
#define LSR_DATA_READY 0x01
#define LSR_THR_EMPTY 0x20

static inline void outb(u16 port, u8 value) {
    __asm__ volatile("outb %0, %1" : : "a"(value), "Nd"(port));
}

static inline u8 inb(u16 port) {
    u8 value;
    __asm__ volatile("inb %1, %0" : "=a"(value) : "Nd"(port));
    return value;
}

static inline void put_char(char c) {
    while (!(inb(COM1 + 5) & LSR_THR_EMPTY)) {
    }
    outb(COM1, (u8)c);
}

static inline void put_str(const char *s) {
    while (*s) put_char(*s++);
}

static inline void put_hex(u64 v) {
    put_str("0x");
    for (int shift = 60; shift >= 0; shift -= 4) put_char("0123456789abcdef"[(v >> shift) & 0xf]);
}

static inline char get_char(void) {
    while (!(inb(COM1 + 5) & LSR_DATA_READY)) {
    }
    return (char)inb(COM1);
}

/* The text just past the first `word` in `s`, or 0 (command-line flags). */
static inline const char *after(const char *s, const char *word) {
    for (; *s; s++) {
        const char *a = s, *b = word;
        while (*b && *a == *b) a++, b++;
        if (!*b) return a;
    }
    return 0;
}

static inline int contains(const char *s, const char *word) { return after(s, word) != 0; }

static inline u64 read64(u64 addr) { return *(volatile u64 *)addr; }
static inline u32 read32(u64 addr) { return *(volatile u32 *)addr; }
static inline u8 read8(u64 addr) { return *(volatile u8 *)addr; }

#endif
