/* virtio-mmio (version 2) registers and split-queue descriptors, for the
 * polled virtio drivers of the test guests. */
#ifndef RVMM_VIRTIO_MMIO_H
#define RVMM_VIRTIO_MMIO_H
#include "guest.h"

#define REG(base, off) (*(volatile u32 *)((base) + (off)))
#define MAGIC 0x000
#define VERSION 0x004
#define DEVICE_ID 0x008
#define DEVICE_FEATURES 0x010
#define DEVICE_FEATURES_SEL 0x014
#define DRIVER_FEATURES 0x020
#define DRIVER_FEATURES_SEL 0x024
#define QUEUE_SEL 0x030
#define QUEUE_NUM_MAX 0x034
#define QUEUE_NUM 0x038
#define QUEUE_READY 0x044
#define QUEUE_NOTIFY 0x050
#define INTERRUPT_STATUS 0x060
#define INTERRUPT_ACK 0x064
#define STATUS 0x070
#define QUEUE_DESC_LOW 0x080
#define QUEUE_DESC_HIGH 0x084
#define QUEUE_AVAIL_LOW 0x090
#define QUEUE_AVAIL_HIGH 0x094
#define QUEUE_USED_LOW 0x0a0
#define QUEUE_USED_HIGH 0x0a4
#define CONFIG 0x100

#define S_ACK 1
#define S_DRIVER 2
#define S_DRIVER_OK 4
#define S_FEATURES_OK 8

#define D_NEXT 1
#define D_WRITE 2

struct desc {
    u64 addr;
    u32 len;
    u16 flags, next;
};

static inline void barrier(void) { __asm__ volatile("" ::: "memory"); }

#endif
