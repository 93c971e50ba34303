/* The ELF note every test guest carries. With PVH defined it is the PVH entry
 * note (XEN_ELFNOTE_PHYS32_ENTRY, owner "Xen") pointing at pvh_start; without
 * it, a note of another type, which the loader must ignore. */
#ifdef PVH
#define NOTE_TYPE 18
#else
#define NOTE_TYPE 0x7276
#endif
    .section .note.rvmm, "a"
    .p2align 2
    .long 4
    .long 4
    .long NOTE_TYPE
    .asciz "Xen"
    .long pvh_start
