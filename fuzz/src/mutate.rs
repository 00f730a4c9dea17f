//! A small deterministic mutator for the smoke tests: the structured
//! random inputs `cargo test` feeds each target without libFuzzer.

/// xorshift64* generator.
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }

    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value below `n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Where to mutate: mostly the head and the tail, where the structure is.
fn position(rng: &mut Rng, len: usize) -> usize {
    match rng.below(4) {
        0 | 1 => rng.below(len.min(4096)),
        2 => len - 1 - rng.below(len.min(8192)),
        _ => rng.below(len),
    }
}

const INTERESTING: [u64; 8] = [0, 1, 0x7f, 0xff, 0xffff, 0x7fff_ffff, 0xffff_ffff, u64::MAX];

/// One mutant of `seed`: one to four edits (bit flips, byte sets,
/// interesting integers, truncation, insertion, deletion, duplication).
pub fn mutant(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        if v.is_empty() {
            v.push(rng.next_u64() as u8);
            continue;
        }
        let p = position(rng, v.len());
        match rng.below(7) {
            0 => v[p] ^= 1 << rng.below(8),
            1 => v[p] = rng.next_u64() as u8,
            2 => {
                let x = INTERESTING[rng.below(INTERESTING.len())].to_le_bytes();
                let big = rng.below(2) == 0;
                let w = [1usize, 2, 4, 8][rng.below(4)].min(v.len() - p);
                for (i, b) in v[p..p + w].iter_mut().enumerate() {
                    *b = if big { x[w - 1 - i] } else { x[i] };
                }
            }
            3 => v.truncate(p),
            4 => {
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
                v.splice(p..p, bytes);
            }
            5 => {
                let n = (1 + rng.below(64)).min(v.len() - p);
                v.drain(p..p + n);
            }
            _ => {
                let n = (1 + rng.below(64)).min(v.len() - p);
                let chunk = v[p..p + n].to_vec();
                let q = rng.below(v.len());
                v.splice(q..q, chunk);
            }
        }
    }
    v
}
