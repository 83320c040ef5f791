//! What threads do with the heap, bytes held and allocations made, for
//! tests that bound what the proxy keeps per connection and allocates per
//! call (the crate's tests only).
//!
//! The test binary's allocator is the system's, counting: a thread that
//! [`Account::charge_this_thread`] adds the bytes it allocates to that
//! account, and the allocations, and subtracts the bytes it frees (whoever
//! allocated them). The
//! in-process proxy runs on a thread of its own, so its account holds what
//! the proxy keeps, apart from the test's clients and applications.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

thread_local! {
    /// The account this thread's allocations go to, if any. Constant
    /// initialisation and no destructor: reading it never allocates.
    static ACCOUNT: Cell<Option<&'static Account>> = const { Cell::new(None) };
}

/// What the threads charged to it did with the heap.
pub struct Account {
    /// Bytes allocated minus bytes freed.
    held: AtomicIsize,
    /// Allocations made (a `realloc` counts as one).
    allocations: AtomicUsize,
}

impl Account {
    /// An account with nothing in it.
    pub const fn new() -> Self {
        Account {
            held: AtomicIsize::new(0),
            allocations: AtomicUsize::new(0),
        }
    }

    /// Charges this thread's allocations and frees from now on to this account.
    pub fn charge_this_thread(&'static self) {
        ACCOUNT.with(|account| account.set(Some(self)));
    }

    /// Bytes allocated minus bytes freed so far, in bytes.
    pub fn held(&self) -> isize {
        self.held.load(Ordering::Relaxed)
    }

    /// Allocations so far.
    pub fn allocations(&self) -> usize {
        self.allocations.load(Ordering::Relaxed)
    }
}

/// Adds `bytes` (negative: freed) to this thread's account, and one
/// allocation if `allocated`.
fn charge(bytes: isize, allocated: bool) {
    // `try_with`: a thread that is ending may free after its locals are gone.
    let _ = ACCOUNT.try_with(|account| {
        if let Some(account) = account.get() {
            account.held.fetch_add(bytes, Ordering::Relaxed);
            account.allocations.fetch_add(usize::from(allocated), Ordering::Relaxed);
        }
    });
}

/// The system allocator, charging each thread's account.
struct Counting;

// SAFETY: every call is passed to the system allocator with the caller's
// arguments unchanged; the accounting only reads a thread-local and adds to
// an atomic, and neither allocates.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc` is the system allocator's.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            charge(layout.size() as isize, true);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            charge(layout.size() as isize, true);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, that is from the system's.
        unsafe { System.dealloc(ptr, layout) };
        charge(-(layout.size() as isize), false);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from the system allocator with `layout`.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            charge(new_size as isize - layout.size() as isize, true);
        }
        new
    }
}
