//! A pool's checkout permits: a fair (FIFO) semaphore whose common paths
//! take no lock. tokio's semaphore locks its waiter list on every release,
//! which here is every transaction; this one counts free permits and
//! waiters in one atomic word, so taking a free permit and giving one back
//! while nobody waits are one compare-and-swap each. Only a client that has
//! to wait, and a release that finds one waiting, take the lock.
//!
//! Fairness: while anyone waits, a newcomer does not take a permit that
//! comes free; the release hands it to the longest waiter instead.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

/// Free permits in the low half of the word, waiters in the high half.
const FREE: u64 = 0xffff_ffff;
const WAITER: u64 = 1 << 32;

pub struct Permits {
    state: AtomicU64,
    queue: Mutex<VecDeque<Arc<Waiter>>>,
}

/// One waiting acquire: granted a permit by a release, or still queued.
#[derive(Default)]
struct Waiter {
    granted: AtomicBool,
    waker: AtomicWaker,
}

impl Permits {
    pub fn new(permits: u32) -> Permits {
        Permits {
            state: AtomicU64::new(u64::from(permits)),
            queue: Mutex::default(),
        }
    }

    /// A free permit, unless none is free or someone waits for one.
    pub fn try_acquire(&self) -> bool {
        self.state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                (s & !FREE == 0 && s & FREE > 0).then(|| s - 1)
            })
            .is_ok()
    }

    /// A permit, after everyone who waited before. Dropping the future
    /// gives up the place in the queue (or the permit, if it was granted
    /// meanwhile, to the next in line).
    pub fn acquire(&self) -> Acquire<'_> {
        Acquire {
            permits: self,
            waiter: None,
            done: false,
        }
    }

    /// Give `n` permits back (or new ones, when the pool grows): to the
    /// longest waiters first.
    pub fn release(&self, n: u32) {
        for _ in 0..n {
            self.release_one();
        }
    }

    fn release_one(&self) {
        let freed = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                (s & !FREE == 0).then(|| s + 1)
            });
        if freed.is_ok() {
            return;
        }
        // Someone waits (counted under the lock, so it is in the queue).
        let mut queue = self.lock();
        match queue.pop_front() {
            Some(waiter) => {
                self.state.fetch_sub(WAITER, Ordering::AcqRel);
                // Granted under the lock: a waiter leaving finds itself
                // either queued or granted, never in between.
                waiter.granted.store(true, Ordering::Release);
                drop(queue);
                waiter.waker.wake();
            }
            // The waiter left between our look and the lock.
            None => {
                self.state.fetch_add(1, Ordering::AcqRel);
            }
        }
    }

    /// Take up to `n` free permits out of circulation (the pool shrank);
    /// how many were free to take.
    pub fn forget(&self, n: u32) -> u32 {
        let mut taken = 0;
        let _ = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                taken = (s & FREE).min(u64::from(n));
                Some(s - taken)
            });
        taken as u32
    }

    /// Free permits now.
    #[cfg(test)]
    fn available(&self) -> u32 {
        (self.state.load(Ordering::Acquire) & FREE) as u32
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Arc<Waiter>>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub struct Acquire<'a> {
    permits: &'a Permits,
    waiter: Option<Arc<Waiter>>,
    done: bool,
}

impl Future for Acquire<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if let Some(waiter) = &this.waiter {
            waiter.waker.register(cx.waker());
            if waiter.granted.load(Ordering::Acquire) {
                this.done = true;
                return Poll::Ready(());
            }
            return Poll::Pending;
        }
        if this.permits.try_acquire() {
            this.done = true;
            return Poll::Ready(());
        }
        let permits = this.permits;
        let mut queue = permits.lock();
        // Under the lock: a permit freed since the look above is taken
        // now, else this acquire is counted and queued before a release
        // can look for it.
        let mut took = false;
        let _ = permits
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                took = s & !FREE == 0 && s & FREE > 0;
                Some(if took { s - 1 } else { s + WAITER })
            });
        if took {
            this.done = true;
            return Poll::Ready(());
        }
        let waiter = Arc::new(Waiter::default());
        waiter.waker.register(cx.waker());
        queue.push_back(waiter.clone());
        this.waiter = Some(waiter);
        Poll::Pending
    }
}

impl Drop for Acquire<'_> {
    fn drop(&mut self) {
        let Some(waiter) = self.waiter.take() else {
            return;
        };
        if self.done {
            return;
        }
        let mut queue = self.permits.lock();
        if let Some(at) = queue.iter().position(|w| Arc::ptr_eq(w, &waiter)) {
            queue.remove(at);
            self.permits.state.fetch_sub(WAITER, Ordering::AcqRel);
            return;
        }
        drop(queue);
        // Granted but never taken: it goes to the next in line.
        if waiter.granted.load(Ordering::Acquire) {
            self.permits.release_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    fn poll(f: &mut Pin<Box<Acquire<'_>>>) -> Poll<()> {
        f.as_mut().poll(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn permits_go_to_waiters_in_the_order_they_came() {
        let p = Permits::new(1);
        assert!(p.try_acquire());
        let mut first = Box::pin(p.acquire());
        let mut second = Box::pin(p.acquire());
        assert!(poll(&mut first).is_pending());
        assert!(poll(&mut second).is_pending());
        assert!(!p.try_acquire(), "a newcomer does not jump the queue");
        p.release(1);
        assert!(
            poll(&mut second).is_pending(),
            "the first in line is served first"
        );
        assert!(poll(&mut first).is_ready());
        p.release(1);
        assert!(poll(&mut second).is_ready());
        p.release(1);
        assert_eq!(p.available(), 1);
        assert!(p.try_acquire());
    }

    #[test]
    fn a_waiter_that_leaves_gives_up_its_place_or_its_permit() {
        let p = Permits::new(1);
        assert!(p.try_acquire());
        let mut leaves = Box::pin(p.acquire());
        let mut stays = Box::pin(p.acquire());
        assert!(poll(&mut leaves).is_pending());
        assert!(poll(&mut stays).is_pending());
        drop(leaves);
        p.release(1);
        assert!(poll(&mut stays).is_ready(), "the one who left is skipped");

        // Granted, then dropped before it was polled again: passed on.
        let mut granted = Box::pin(p.acquire());
        let mut next = Box::pin(p.acquire());
        assert!(poll(&mut granted).is_pending());
        assert!(poll(&mut next).is_pending());
        p.release(1);
        drop(granted);
        assert!(poll(&mut next).is_ready());
        p.release(1);
        assert_eq!(p.available(), 1, "no permit is lost or made");
    }

    #[test]
    fn shrinking_takes_only_free_permits() {
        let p = Permits::new(3);
        assert!(p.try_acquire());
        assert_eq!(p.forget(5), 2);
        assert_eq!(p.available(), 0);
        p.release(1);
        assert_eq!(p.available(), 1);
    }

    /// Four threads sharing two permits (so they queue): every acquire is
    /// served and the count stays exact.
    #[test]
    fn concurrent_use_keeps_the_count() {
        let p = Arc::new(Permits::new(2));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let p = p.clone();
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .build()
                        .unwrap();
                    for _ in 0..2000 {
                        rt.block_on(p.acquire());
                        p.release(1);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(p.available(), 2);
        assert_eq!(
            p.state.load(Ordering::Acquire) >> 32,
            0,
            "no waiter left counted"
        );
    }
}
