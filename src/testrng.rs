//! The property tests' random stream (tests only): xorshift64*, seeded by each test with a
//! constant, so a failing input replays exactly and every run covers the same cases. One
//! generator for every module's bounded property tests (stable Rust, no fuzz tooling).

/// xorshift64*: deterministic, so a failure reproduces. The seed must not be 0.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}
