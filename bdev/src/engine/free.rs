//! The free segments, in two parts: the *window*, the segments client
//! writes may open until the next checkpoint, and the pool behind it.
//!
//! Each checkpoint tops the window up from the pool and lists every window
//! segment not known in use yet (writes open the new ones once it is
//! durable), so that mount after a crash reads the
//! headers of those alone, not of every free segment: what mount scans and
//! replays is bounded by the window (the replay window), whatever the size
//! of the log. Core 0 asks for a checkpoint once half the window is used.
//!
//! Only core 0 moves segments into the window and returns freed segments to
//! the pool; any core opens segments out of the window. Compaction, whose
//! moves copy blocks that stay where they were until its commit's
//! checkpoint, may also take from the pool when the window is empty (a
//! move lost in a crash loses nothing); client writes never go to such a
//! segment.

use crossbeam_queue::ArrayQueue;

pub(crate) struct FreeSegments {
    window: ArrayQueue<u32>,
    pool: ArrayQueue<u32>,
    /// Segments the window holds when full.
    window_target: usize,
}

impl FreeSegments {
    pub fn new(segment_count: u32, window_target: usize) -> FreeSegments {
        let n = segment_count as usize;
        FreeSegments { window: ArrayQueue::new(n), pool: ArrayQueue::new(n), window_target: window_target.max(1) }
    }

    /// Free segments, in the window and behind it.
    pub fn len(&self) -> usize {
        self.window.len() + self.pool.len()
    }

    /// A segment to open for client writes (the window's).
    pub fn take(&self) -> Option<u32> {
        self.window.pop()
    }

    /// A segment to open for compaction's moves: the window's, else the
    /// pool's (`false`: outside the window).
    pub fn take_for_moves(&self) -> Option<(u32, bool)> {
        self.window.pop().map(|s| (s, true)).or_else(|| self.pool.pop().map(|s| (s, false)))
    }

    /// Whether the window is short while the pool has segments: a
    /// checkpoint would let writes go on.
    pub fn window_short(&self) -> bool {
        self.window.len() * 2 < self.window_target && !self.pool.is_empty()
    }

    /// A segment freed (core 0, after the checkpoint that no longer lists
    /// it): into the pool.
    pub fn release(&self, segno: u32) {
        self.pool.push(segno).expect("a freed segment fits the pool");
    }

    /// Core 0, writing a checkpoint: takes segments from the pool to top
    /// the window up (`pending` are on their way in already), for the
    /// checkpoint to list. They enter the window with [`Self::open_window`]
    /// once that checkpoint is durable: a crash mount reads the newest
    /// durable checkpoint, and must find every segment writes opened.
    pub fn take_for_window(&self, pending: usize) -> Vec<u32> {
        let mut taken = Vec::new();
        while self.window.len() + pending + taken.len() < self.window_target {
            let Some(segno) = self.pool.pop() else { break };
            taken.push(segno);
        }
        taken
    }

    /// Segments a durable checkpoint lists as the window: writes may open
    /// them now.
    pub fn open_window(&self, segnos: &[u32]) {
        for &segno in segnos {
            self.window.push(segno).expect("the window holds every segment");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::FreeSegments;

    #[test]
    fn writes_open_window_segments_and_moves_fall_back_to_the_pool() {
        let free = FreeSegments::new(8, 2);
        for s in 0..5 {
            free.release(s);
        }
        assert_eq!(free.take(), None, "nothing is in the window before a checkpoint");
        assert!(free.window_short());
        let listed = free.take_for_window(0);
        assert_eq!(listed, [0, 1]);
        assert_eq!(free.take(), None, "listed, not durable yet");
        assert!(free.take_for_window(2).is_empty(), "on their way in already");
        free.open_window(&listed);
        assert!(!free.window_short());
        assert_eq!(free.len(), 5);
        assert_eq!(free.take(), Some(0));
        assert_eq!(free.take_for_moves(), Some((1, true)));
        assert_eq!(free.take_for_moves(), Some((2, false)), "an empty window: the pool, outside it");
        assert_eq!(free.take(), None);
    }
}
