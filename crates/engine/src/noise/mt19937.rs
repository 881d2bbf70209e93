//! The 32-bit Mersenne Twister as torch's CPU generator runs it (`at::mt19937`), and the
//! uniform floats torch derives from its words. Any other seeding or bit selection would give
//! a different stream for the same seed, so each detail below is torch's.

const STATE_LEN: usize = 624;
const SHIFT_LEN: usize = 397;
const MATRIX_A: u32 = 0x9908_b0df;
const UPPER_MASK: u32 = 0x8000_0000;
const LOWER_MASK: u32 = 0x7fff_ffff;

/// mt19937 with torch's seeding: `manual_seed` takes a u64 but only its low 32 bits reach the
/// state (seeds `s` and `s + 2^32` give the same stream), through the standard
/// `1812433253`-multiplier initialisation.
#[derive(Clone)]
pub(super) struct Mt19937 {
    state: Box<[u32; STATE_LEN]>,
    /// Index of the next word to temper; `STATE_LEN` means the state must be regenerated first
    /// (also right after seeding, as torch does).
    next: usize,
}

impl Mt19937 {
    pub(super) fn new(seed: u64) -> Self {
        let mut state = Box::new([0u32; STATE_LEN]);
        state[0] = seed as u32;
        for j in 1..STATE_LEN {
            let prev = state[j - 1];
            state[j] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(j as u32);
        }
        Self {
            state,
            next: STATE_LEN,
        }
    }

    /// The next 32-bit word (torch's `random()`).
    pub(super) fn next_u32(&mut self) -> u32 {
        if self.next == STATE_LEN {
            self.regenerate();
        }
        let mut y = self.state[self.next];
        self.next += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// torch's `random64()`: two successive words, the first one in the high half.
    pub(super) fn next_u64(&mut self) -> u64 {
        let hi = self.next_u32();
        let lo = self.next_u32();
        (u64::from(hi) << 32) | u64::from(lo)
    }

    /// A float in [0, 1) from the low 24 bits of one word (a float's mantissa width), so every
    /// value is exact: what torch's `uniform_real_distribution<float>(0, 1)` returns.
    pub(super) fn uniform_f32(&mut self) -> f32 {
        const MANTISSA: u32 = (1 << f32::MANTISSA_DIGITS) - 1;
        (self.next_u32() & MANTISSA) as f32 * (1.0 / (1u32 << f32::MANTISSA_DIGITS) as f32)
    }

    /// A double in [0, 1) from the low 53 bits of `next_u64`: torch's
    /// `uniform_real_distribution<double>(0, 1)`.
    pub(super) fn uniform_f64(&mut self) -> f64 {
        const MANTISSA: u64 = (1 << f64::MANTISSA_DIGITS) - 1;
        (self.next_u64() & MANTISSA) as f64 * (1.0 / (1u64 << f64::MANTISSA_DIGITS) as f64)
    }

    /// Fills `out` with successive `uniform_f32` draws.
    pub(super) fn fill_uniform_f32(&mut self, out: &mut [f32]) {
        for v in out {
            *v = self.uniform_f32();
        }
    }

    /// The twist: every word is rebuilt in place, in index order, so words past the 397-word
    /// offset already hold their new values when read (the reference algorithm's order). The
    /// three ranges only spare the index arithmetic a modulo.
    fn regenerate(&mut self) {
        let s = &mut self.state;
        for k in 0..STATE_LEN - SHIFT_LEN {
            s[k] = s[k + SHIFT_LEN] ^ twist(s[k], s[k + 1]);
        }
        for k in STATE_LEN - SHIFT_LEN..STATE_LEN - 1 {
            s[k] = s[k + SHIFT_LEN - STATE_LEN] ^ twist(s[k], s[k + 1]);
        }
        s[STATE_LEN - 1] = s[SHIFT_LEN - 1] ^ twist(s[STATE_LEN - 1], s[0]);
        self.next = 0;
    }
}

/// The top bit of `word`, the low 31 of `next`, shifted right and multiplied into the twist
/// matrix.
fn twist(word: u32, next: u32) -> u32 {
    let y = (word & UPPER_MASK) | (next & LOWER_MASK);
    (y >> 1) ^ if y & 1 == 1 { MATRIX_A } else { 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference implementation's published check value: the 10000th output of
    /// mt19937 seeded with 5489 is 4123659995 (C++ `std::mt19937` requires it too).
    #[test]
    fn noise_mt19937_matches_the_standard_check_value() {
        let mut mt = Mt19937::new(5489);
        let last = (0..10_000).map(|_| mt.next_u32()).last().unwrap();
        assert_eq!(last, 4_123_659_995);
    }

    #[test]
    fn noise_mt19937_uses_only_the_low_32_bits_of_the_seed() {
        let mut a = Mt19937::new(1234);
        let mut b = Mt19937::new((7 << 32) + 1234);
        for _ in 0..700 {
            assert_eq!(a.next_u32(), b.next_u32());
        }
    }

    #[test]
    fn noise_mt19937_u64_is_high_word_first() {
        let mut words = Mt19937::new(99);
        let mut pairs = Mt19937::new(99);
        let (hi, lo) = (words.next_u32(), words.next_u32());
        assert_eq!(pairs.next_u64(), (u64::from(hi) << 32) | u64::from(lo));
    }
}
