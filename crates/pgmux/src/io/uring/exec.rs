//! The io_uring worker's executor: the tasks of one thread, the queue of
//! those woken, and its timers. Tasks are polled one at a time from the
//! ready queue; a wake on this thread queues the task locally, a wake from
//! another thread (a pool permit released by another worker, a message of
//! the control plane) queues it on the shared list and, if the loop sleeps,
//! writes a byte to the loop's wake-up socket, which a receive on the ring
//! always waits on.

use std::cell::{Cell, RefCell};
use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

type Task = Pin<Box<dyn Future<Output = ()>>>;

/// What other threads reach of this thread's executor.
pub struct Shared {
    /// Tasks woken from other threads.
    remote: Mutex<Vec<usize>>,
    /// Set after a push to `remote`: the loop looks at (and locks) the
    /// list only when something is there, not on every turn.
    remote_pending: AtomicBool,
    /// The loop is (about to be) asleep in the ring: a remote wake must
    /// write to `kick`.
    sleeping: AtomicBool,
    kick: UnixStream,
}

impl Shared {
    fn wake(&self, id: usize) {
        // This thread's executor is known by its address: cheaper than
        // asking for the current thread's handle on every wake.
        if HERE.with(Cell::get) == self as *const Shared as usize {
            LOCAL.with(|l| l.borrow_mut().push_back(id));
            return;
        }
        self.remote
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(id);
        // SeqCst with `may_sleep`'s store of `sleeping` and load of this
        // flag: either the loop sees the flag, or this sees it sleeping.
        self.remote_pending.store(true, Ordering::SeqCst);
        if self.sleeping.swap(false, Ordering::SeqCst) {
            // A full socket already holds a wake-up: nothing lost.
            let _ = (&self.kick).write(&[1]);
        }
    }
}

struct TaskWaker {
    id: usize,
    /// Set while the task is queued, so it is queued once.
    queued: AtomicBool,
    shared: Arc<Shared>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            self.shared.wake(self.id);
        }
    }
}

struct Slot {
    task: Option<Task>,
    waker: Arc<TaskWaker>,
}

thread_local! {
    static LOCAL: RefCell<VecDeque<usize>> = const { RefCell::new(VecDeque::new()) };
    static TASKS: RefCell<Vec<Option<Slot>>> = const { RefCell::new(Vec::new()) };
    static FREE: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
    static SHARED: RefCell<Option<Arc<Shared>>> = const { RefCell::new(None) };
    /// The address of this thread's `Shared` (0: none), to tell a local
    /// wake from a remote one.
    static HERE: Cell<usize> = const { Cell::new(0) };
    static TIMERS: RefCell<BTreeMap<(Instant, u64), Waker>> = const { RefCell::new(BTreeMap::new()) };
    static TIMER_SEQ: Cell<u64> = const { Cell::new(0) };
    /// Set while the executor is torn down: a task dropped then may spawn
    /// another (a server handed back spawns its close), which is dropped
    /// at once instead of landing in a task list that is gone.
    static CLOSING: Cell<bool> = const { Cell::new(false) };
}

/// Make this thread an executor; returns the socket end the loop must
/// keep a receive on (a byte there means: look at the shared queue).
pub fn install() -> std::io::Result<UnixStream> {
    let (kick, wakeup) = UnixStream::pair()?;
    kick.set_nonblocking(true)?;
    wakeup.set_nonblocking(true)?;
    let shared = Arc::new(Shared {
        remote: Mutex::new(Vec::new()),
        remote_pending: AtomicBool::new(false),
        sleeping: AtomicBool::new(false),
        kick,
    });
    HERE.with(|h| h.set(Arc::as_ptr(&shared) as usize));
    SHARED.with(|s| *s.borrow_mut() = Some(shared));
    CLOSING.with(|c| c.set(false));
    Ok(wakeup)
}

pub fn active() -> bool {
    SHARED.with(|s| s.borrow().is_some())
}

/// Run `task` on this thread's executor.
pub fn spawn(task: impl Future<Output = ()> + 'static) {
    if CLOSING.with(Cell::get) {
        return;
    }
    let Some(shared) = SHARED.with(|s| s.borrow().clone()) else {
        return;
    };
    let id = FREE.with(|f| f.borrow_mut().pop()).unwrap_or_else(|| {
        TASKS.with(|t| {
            let mut t = t.borrow_mut();
            t.push(None);
            t.len() - 1
        })
    });
    let waker = Arc::new(TaskWaker {
        id,
        queued: AtomicBool::new(true),
        shared,
    });
    TASKS.with(|t| {
        t.borrow_mut()[id] = Some(Slot {
            task: Some(Box::pin(task)),
            waker,
        })
    });
    LOCAL.with(|l| l.borrow_mut().push_back(id));
}

/// Poll every queued task once (tasks woken meanwhile run in this call
/// too); returns how many polls ran.
pub fn run_ready() -> usize {
    let mut polls = 0;
    take_remote();
    loop {
        let Some(id) = LOCAL.with(|l| l.borrow_mut().pop_front()) else {
            take_remote();
            if LOCAL.with(|l| l.borrow().is_empty()) {
                return polls;
            }
            continue;
        };
        // The future is taken out while it runs, so that it may spawn or
        // wake others (which borrow the table).
        let taken = TASKS.with(|t| {
            let mut t = t.borrow_mut();
            let slot = t.get_mut(id)?.as_mut()?;
            slot.waker.queued.store(false, Ordering::Release);
            Some((slot.task.take()?, slot.waker.clone()))
        });
        let Some((mut task, waker)) = taken else {
            continue;
        };
        polls += 1;
        let waker = Waker::from(waker);
        let mut cx = Context::from_waker(&waker);
        let finished = task.as_mut().poll(&mut cx).is_ready();
        TASKS.with(|t| {
            let mut t = t.borrow_mut();
            if finished {
                t[id] = None;
                FREE.with(|f| f.borrow_mut().push(id));
            } else if let Some(slot) = t[id].as_mut() {
                slot.task = Some(task);
            }
        });
    }
}

fn take_remote() {
    let woken = SHARED.with(|s| {
        let s = s.borrow();
        let shared = s.as_ref()?;
        if !shared.remote_pending.swap(false, Ordering::SeqCst) {
            return None;
        }
        let woken = std::mem::take(&mut *shared.remote.lock().unwrap_or_else(|p| p.into_inner()));
        Some(woken)
    });
    if let Some(woken) = woken.filter(|w| !w.is_empty()) {
        LOCAL.with(|l| l.borrow_mut().extend(woken));
    }
}

/// About to sleep in the ring: from now on remote wakes write a byte.
/// False if something is already queued (do not sleep then).
pub fn may_sleep() -> bool {
    SHARED.with(|s| {
        let s = s.borrow();
        let Some(shared) = s.as_ref() else {
            return true;
        };
        shared.sleeping.store(true, Ordering::SeqCst);
        let quiet =
            !shared.remote_pending.load(Ordering::SeqCst) && LOCAL.with(|l| l.borrow().is_empty());
        if !quiet {
            shared.sleeping.store(false, Ordering::Release);
        }
        quiet
    })
}

pub fn woke_up() {
    SHARED.with(|s| {
        if let Some(shared) = s.borrow().as_ref() {
            shared.sleeping.store(false, Ordering::Release);
        }
    });
}

/// Wake the timers that are due; returns how long until the next one.
pub fn fire_timers() -> Option<Duration> {
    if TIMERS.with(|t| t.borrow().is_empty()) {
        // No clock read on a turn with no timer.
        return None;
    }
    let now = Instant::now();
    // Taken from the front one by one: a split of the map would allocate
    // a new tree on every turn.
    let mut due: Vec<Waker> = Vec::new();
    TIMERS.with(|t| {
        let mut t = t.borrow_mut();
        while let Some(first) = t.first_entry() {
            if first.key().0 > now {
                break;
            }
            due.push(first.remove());
        }
    });
    for w in due {
        w.wake();
    }
    TIMERS.with(|t| {
        t.borrow()
            .keys()
            .next()
            .map(|(at, _)| at.saturating_duration_since(now))
    })
}

/// Drop every task (the worker is stopping).
pub fn clear() {
    CLOSING.with(|c| c.set(true));
    let tasks = TASKS.with(|t| std::mem::take(&mut *t.borrow_mut()));
    drop(tasks);
    LOCAL.with(|l| l.borrow_mut().clear());
    FREE.with(|f| f.borrow_mut().clear());
    TIMERS.with(|t| t.borrow_mut().clear());
}

/// Sleep until `deadline` on this thread's timers.
pub struct Sleep {
    deadline: Instant,
    key: Option<(Instant, u64)>,
}

pub fn sleep_until(deadline: Instant) -> Sleep {
    Sleep {
        deadline,
        key: None,
    }
}

impl Future for Sleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.deadline {
            if let Some(key) = self.key.take() {
                TIMERS.with(|t| t.borrow_mut().remove(&key));
            }
            return Poll::Ready(());
        }
        let key = match self.key {
            Some(k) => k,
            None => {
                let seq = TIMER_SEQ.with(|s| {
                    s.set(s.get() + 1);
                    s.get()
                });
                let k = (self.deadline, seq);
                self.key = Some(k);
                k
            }
        };
        TIMERS.with(|t| match t.borrow_mut().entry(key) {
            // Polled again by the same task: nothing to change.
            Entry::Occupied(e) if e.get().will_wake(cx.waker()) => {}
            Entry::Occupied(mut e) => {
                e.insert(cx.waker().clone());
            }
            Entry::Vacant(e) => {
                e.insert(cx.waker().clone());
            }
        });
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            // The thread may be tearing down its timers already.
            let _ = TIMERS.try_with(|t| t.borrow_mut().remove(&key));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spawns a task when dropped, as a checked-out server does.
    struct SpawnsOnDrop(Arc<AtomicBool>);

    impl Drop for SpawnsOnDrop {
        fn drop(&mut self) {
            let ran = self.0.clone();
            spawn(async move { ran.store(true, Ordering::Release) });
        }
    }

    #[test]
    fn a_task_dropped_at_teardown_may_spawn_without_harm() {
        std::thread::spawn(|| {
            let _wakeup = install().unwrap();
            let ran = Arc::new(AtomicBool::new(false));
            let guard = SpawnsOnDrop(ran.clone());
            spawn(async move {
                let _guard = guard;
                std::future::pending::<()>().await
            });
            run_ready();
            clear();
            assert!(
                !ran.load(Ordering::Acquire),
                "the late task is dropped, not run"
            );
            assert_eq!(TASKS.with(|t| t.borrow().len()), 0);
        })
        .join()
        .unwrap();
    }
}
