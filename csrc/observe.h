/*
 * observe.h: what the core tells the observers (pagemap.c, pressure.c) when
 * pages change state.  Each call is one line in the core file that makes
 * the change (pagealloc.c, mem_linux.c), at span granularity: nothing here
 * runs on a malloc or free fast path.
 *
 *   gm_obs_grow          a newly mapped chunk (Reserved -> Prepared: released)
 *   gm_obs_span_alloc    a span made in use: its pages hold class sizeclass
 *                        (0: one large object); heap_inuse counts it already
 *   gm_obs_span_free     a span returned to the heap: its pages are free (or
 *                        faulted, with fault_on_free); heap_inuse no longer
 *                        counts it
 *   gm_obs_released      [v, v+n) was released to the OS (sysUnused); any
 *                        part outside the arenas (state maps) is ignored
 *   gm_obs_remapped      a faulted page mapped again (Prepared: released)
 *   gm_obs_quarantined   a destroyed heap's span made PROT_NONE for a while
 *                        (heap.c's quarantine; gm_obs_span_free when it ends)
 *
 * Page map writes are relaxed byte stores by the thread that owns the pages
 * at that moment (the heap lock's holder, or the page cache's owner).
 */
#ifndef GM_OBSERVE_H
#define GM_OBSERVE_H

#include <stdint.h>

__attribute__((visibility("hidden"))) void gm_obs_grow(uintptr_t v, uintptr_t bytes);
__attribute__((visibility("hidden"))) void gm_obs_span_alloc(uintptr_t base, uintptr_t npages, uint8_t sizeclass);
__attribute__((visibility("hidden"))) void gm_obs_span_free(uintptr_t base, uintptr_t npages);
__attribute__((visibility("hidden"))) void gm_obs_released(uintptr_t v, uintptr_t n);
__attribute__((visibility("hidden"))) void gm_obs_remapped(uintptr_t a, uintptr_t n);
__attribute__((visibility("hidden"))) void gm_obs_quarantined(uintptr_t base, uintptr_t npages);

/* pressure.c: heap_inuse changed at span granularity (from the calls
 * above); cheap unless a threshold is crossed. */
__attribute__((visibility("hidden"))) void gm_pressure_note(void);
/* options.c: memory_limit or hard_limit changed. */
__attribute__((visibility("hidden"))) void gm_pressure_limits_changed(long long value);
/* options.c, at start-up and on gm_limits_refresh: the cgroup's memory
 * limit in bytes (min of memory.max and memory.high over the process's
 * cgroup v2 and its ancestors), 0 if none.  No malloc, no stdio. */
__attribute__((visibility("hidden"))) uint64_t gm_cgroup_limit_read(void);

#endif /* GM_OBSERVE_H */
