//! Transparent huge pages for memory-mode shards.
//!
//! A lookup in a memory-mode shard touches two places far apart (a slot of
//! the table, then a record of the arena), and a shard of 1 M rows spans
//! tens of thousands of 4 KiB pages: with ordinary pages most lookups pay
//! two TLB misses besides their two cache misses, and the misses of the
//! page walk are what lift the tail. Backed by 2 MiB pages, the same
//! memory spans a few dozen entries, which the TLB holds.
//!
//! Linux backs anonymous memory with huge pages only where a program asks
//! (`madvise(MADV_HUGEPAGE)`) when transparent huge pages are in their
//! `madvise` mode, the common default. [`advise`] asks, for the whole 2 MiB
//! pages inside a vector's allocation, before the vector is filled: the
//! kernel then backs them with huge pages as they are first touched (and
//! its background collector merges what it could not at once). On other
//! systems, or when transparent huge pages are off, it does nothing.
//!
//! # Why this module has `unsafe`
//!
//! `madvise` is a C function, reached through `libc`, and every foreign
//! call is `unsafe`. The workspace denies `unsafe_code`; this module is one
//! of its few audited exceptions (docs/development.md lists them), kept
//! to one call. The advice given, `MADV_HUGEPAGE`, changes
//! neither the contents nor the validity of any memory: it is a hint about
//! how to back it, and the range it is given lies inside an allocation the
//! caller owns.

#![allow(unsafe_code)]

/// Size of a huge page on the systems that have them (x86-64, aarch64
/// with 4 KiB base pages).
#[cfg(target_os = "linux")]
const HUGE_PAGE: usize = 2 << 20;

/// Asks for huge pages under the whole 2 MiB pages inside `v`'s allocation
/// (its capacity, filled or not). Returns whether the kernel took the
/// advice: `false` when the allocation holds no whole huge page, when
/// transparent huge pages are off or absent, or off Linux. Either way the
/// vector is unchanged.
#[cfg(target_os = "linux")]
pub(crate) fn advise<T>(v: &Vec<T>) -> bool {
    let start = v.as_ptr() as usize;
    let Some(end) = v
        .capacity()
        .checked_mul(std::mem::size_of::<T>())
        .and_then(|bytes| start.checked_add(bytes))
    else {
        return false;
    };
    let first = start.next_multiple_of(HUGE_PAGE);
    let last = end - end % HUGE_PAGE;
    if last <= first {
        return false;
    }
    // SAFETY: `first..last` lies inside `v`'s allocation (rounded inwards
    // to whole huge pages), which `v` owns for the duration of the call;
    // MADV_HUGEPAGE only tells the kernel how to back those pages and
    // neither reads, writes, frees nor remaps any of them.
    let done = unsafe { libc::madvise(first as *mut libc::c_void, last - first, libc::MADV_HUGEPAGE) };
    done == 0
}

/// Off Linux there is nothing to ask.
#[cfg(not(target_os = "linux"))]
pub(crate) fn advise<T>(_v: &Vec<T>) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_allocations_hold_no_huge_page_and_are_left_alone() {
        let v: Vec<u8> = Vec::with_capacity(4096);
        assert!(!advise(&v));
        let empty: Vec<u64> = Vec::new();
        assert!(!advise(&empty));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn an_advised_vector_keeps_its_contents_and_its_mapping_is_flagged() {
        let mut v: Vec<u64> = Vec::with_capacity(3 * HUGE_PAGE / 8);
        v.extend(0..1000u64);
        let advised = advise(&v);
        if std::path::Path::new("/sys/kernel/mm/transparent_hugepage/enabled").exists() {
            assert!(advised, "the kernel has huge pages, yet refused the advice");
            // The mapping holding the vector's second huge page carries
            // the `hg` flag (the advice splits it out of the heap's).
            let probe = v.as_ptr() as usize + HUGE_PAGE;
            let smaps = std::fs::read_to_string("/proc/self/smaps").expect("smaps");
            let mut inside = false;
            let mut flagged = false;
            for line in smaps.lines() {
                if let Some((range, _)) = line.split_once(' ')
                    && let Some((lo, hi)) = range.split_once('-')
                    && let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
                {
                    inside = lo <= probe && probe < hi;
                } else if inside && line.starts_with("VmFlags:") {
                    flagged = line.split_whitespace().any(|f| f == "hg");
                    break;
                }
            }
            assert!(flagged, "the mapping around the vector is not flagged for huge pages");
        } else {
            assert!(!advised, "a kernel without huge pages took the advice");
        }
        assert!(v.iter().copied().eq(0..1000u64));
    }
}
