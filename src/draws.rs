//! A small xorshift generator for the unit tests that try many random
//! changes: seeded, so a test draws the same on every run.

pub struct Draws(pub u64);

impl Draws {
    /// The next draw, below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}
