//! Content-defined chunk boundaries: where a file is cut into blobs.
//!
//! Cutting at fixed offsets finds a repeated run of bytes only when it sits at the same offset
//! modulo the chunk size. Build outputs repeat most of their bytes at shifted offsets (a rebuilt
//! crate, a binary linking the same code as another), and on a `target/` folder fixed 4 MiB
//! chunks made the repository 1.3× rustic's. Here a cut falls where the content says: after a
//! byte at which a rolling hash of the bytes just before it (a gear hash, FastCDC's, Xia et al.
//! 2016) has its top bits zero, so an insertion moves the cuts after it along with the bytes.
//!
//! Lengths stay between `min` and `max` and gather around `avg` (FastCDC's normalized
//! chunking: a stricter condition before `avg`, a looser one after it). The hash starts 64
//! bytes before `min`, so whether a position is a cut candidate depends on the 64 bytes before
//! it alone, and two cuttings of the same bytes from different starting points fall into step at
//! their first common candidate.
//!
//! The gear table comes from the repository's id key: a plaintext repository's is the same
//! everywhere; an encrypted one's is its own, so chunk lengths (visible in the sizes of sealed
//! blobs) do not tell which known file was stored.
//!
//! Readers do not depend on any of this: a manifest lists each chunk's length, so repositories
//! written with other cuts (fixed chunks, before) restore and deduplicate alike.

use crate::crypto::Keys;

/// The bytes a cut candidate depends on: a gear hash forgets a byte after 64 shifts.
const WINDOW: usize = 64;

/// Chunks are at most `chunk_size` long, an eighth of it on average, at least a 32nd.
/// Measured on a `target/` folder (4.3 GB, one full backup, stored MiB; rustic 781.3, whose
/// chunks are 512 KiB / 1 MiB / 8 MiB): average a quarter and shortest a 16th 806.8, average
/// an eighth 779.7 (shortest a 16th) and 774.7 (a 32nd), a 16th 749.6 (shortest a 32nd), half
/// 842.7, in the same time. Shorter chunks find more, but each is a reference in the manifest
/// and an entry in the dedup index a backup holds in memory: an eighth keeps them at about two
/// million per TB stored.
const AVERAGE_PART: u64 = 8;
const SHORTEST_PART: u64 = 32;

/// The shortest chunk cut from files of a repository with `chunk_size` (a file's last chunk
/// may be shorter).
pub fn shortest(chunk_size: u64) -> u64 {
    chunk_size / SHORTEST_PART
}

/// Chooses chunk boundaries for one repository.
#[derive(Clone)]
pub struct Chunker {
    gear: Box<[u64; 256]>,
    min: usize,
    avg: usize,
    max: usize,
    /// Mask of the top bits that must be zero before `avg` (one bit more than `avg` asks)...
    strict: u64,
    /// ...and after it (one bit fewer).
    loose: u64,
}

impl std::fmt::Debug for Chunker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chunker")
            .field("min", &self.min)
            .field("avg", &self.avg)
            .field("max", &self.max)
            .finish()
    }
}

/// Where [`Chunker::cut`] left off in the chunk being cut, so more bytes continue the scan.
#[derive(Debug, Clone, Copy, Default)]
pub struct Scan {
    hashed: usize,
    hash: u64,
}

impl Chunker {
    /// Chunks of at most `chunk_size` bytes (4 MiB, 512 KiB on average and at least 128 KiB
    /// for the default; see [`AVERAGE_PART`]).
    pub fn new(chunk_size: u64, keys: &Keys) -> Self {
        let max = usize::try_from(chunk_size).expect("chunk_size is at most 16 MiB");
        let avg = max / AVERAGE_PART as usize;
        let bits = avg.max(2).ilog2();
        Self {
            gear: gear_table(keys),
            min: shortest(chunk_size) as usize,
            avg,
            max,
            strict: top_bits(bits + 1),
            loose: top_bits(bits - 1),
        }
    }

    /// The longest chunk.
    pub fn max(&self) -> usize {
        self.max
    }

    /// The length of the chunk at the start of `data`, if `data` decides it: always when `data`
    /// holds `max` bytes or is `last` (the end of what is cut). `None` asks for more bytes; call
    /// again with `data` extended and the same `scan`, which is reset at every cut.
    pub fn cut(&self, data: &[u8], last: bool, scan: &mut Scan) -> Option<usize> {
        let end = data.len().min(self.max);
        let mut position = scan.hashed.max(self.min.saturating_sub(WINDOW));
        let mut hash = scan.hash;
        let found = 'found: {
            for (bound, mask) in [(self.avg, self.strict), (self.max, self.loose)] {
                while position < end.min(bound) {
                    hash = (hash << 1).wrapping_add(self.gear[usize::from(data[position])]);
                    position += 1;
                    if hash & mask == 0 && position >= self.min {
                        break 'found Some(position);
                    }
                }
            }
            None
        };
        let length = found.or_else(|| (end == self.max || last).then_some(end));
        *scan = match length {
            Some(_) => Scan::default(),
            None => Scan {
                hashed: position,
                hash,
            },
        };
        length.filter(|&n| n > 0)
    }
}

/// A 64-bit mask of the `bits` highest bits (the ones that depend on the most bytes).
fn top_bits(bits: u32) -> u64 {
    !0u64 << (64 - bits.clamp(1, 63))
}

/// 256 pseudo-random words (splitmix64) from a seed only the repository's id key gives.
fn gear_table(keys: &Keys) -> Box<[u64; 256]> {
    let seed = keys.id_of(b"backplan-nfs-objects gear table").0;
    let mut state = u64::from_le_bytes(seed[..8].try_into().expect("8 bytes"));
    let mut table = Box::new([0u64; 256]);
    for word in table.iter_mut() {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        *word = z ^ (z >> 31);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reproducible pseudo-random bytes.
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut rng = fastrand::Rng::with_seed(seed);
        (0..len).map(|_| rng.u8(..)).collect()
    }

    /// Cuts `data` whole, feeding it `step` bytes at a time as a reader would.
    fn cuts(chunker: &Chunker, data: &[u8], step: usize) -> Vec<usize> {
        let mut lengths = Vec::new();
        let (mut start, mut seen) = (0, 0usize);
        let mut scan = Scan::default();
        while start < data.len() {
            seen = seen.saturating_add(step).min(data.len()).max(start);
            match chunker.cut(&data[start..seen], seen == data.len(), &mut scan) {
                Some(length) => {
                    lengths.push(length);
                    start += length;
                }
                None => assert!(seen < data.len(), "the last bytes always make a chunk"),
            }
        }
        lengths
    }

    #[test]
    fn lengths_stay_between_min_and_max_and_gather_around_the_average() {
        let chunker = Chunker::new(64 << 10, &Keys::plaintext());
        let data = noise(8 << 20, 1);
        let lengths = cuts(&chunker, &data, usize::MAX);
        assert_eq!(lengths.iter().sum::<usize>(), data.len());
        let (last, whole) = lengths.split_last().unwrap();
        assert!(*last <= 64 << 10);
        assert!(whole.iter().all(|&n| (2 << 10..=64 << 10).contains(&n)));
        let mean = data.len() / lengths.len();
        assert!((5 << 10..=12 << 10).contains(&mean), "mean {mean}");
    }

    #[test]
    fn the_cuts_do_not_depend_on_how_the_bytes_arrive() {
        let chunker = Chunker::new(64 << 10, &Keys::plaintext());
        let data = noise(1 << 20, 2);
        let whole = cuts(&chunker, &data, usize::MAX);
        for step in [1, 4095, 4096, 65_537] {
            assert_eq!(cuts(&chunker, &data, step), whole, "step {step}");
        }
    }

    #[test]
    fn bytes_inserted_at_the_front_leave_the_later_chunks_as_they_were() {
        let chunker = Chunker::new(64 << 10, &Keys::plaintext());
        let data = noise(2 << 20, 3);
        let mut shifted = noise(1234, 4);
        shifted.extend_from_slice(&data);
        let chunks = |bytes: &[u8]| {
            let mut at = 0;
            cuts(&chunker, bytes, usize::MAX)
                .into_iter()
                .map(|n| {
                    at += n;
                    bytes[at - n..at].to_vec()
                })
                .collect::<std::collections::HashSet<_>>()
        };
        let (before, after) = (chunks(&data), chunks(&shifted));
        let shared = before.intersection(&after).map(Vec::len).sum::<usize>();
        assert!(shared > data.len() * 9 / 10, "{shared} of {}", data.len());
    }

    #[test]
    fn data_without_cut_points_is_cut_at_max() {
        let chunker = Chunker::new(64 << 10, &Keys::plaintext());
        assert_eq!(
            cuts(&chunker, &vec![0u8; 200 << 10], usize::MAX),
            [64 << 10, 64 << 10, 64 << 10, 8 << 10]
        );
    }

    #[test]
    fn an_encrypted_repository_cuts_by_its_own_table() {
        let plain = Chunker::new(64 << 10, &Keys::plaintext());
        let keyed = Chunker::new(
            64 << 10,
            &Keys::from_master(&[7; crate::crypto::MASTER_KEY_LEN]),
        );
        let data = noise(1 << 20, 5);
        assert_ne!(
            cuts(&plain, &data, usize::MAX),
            cuts(&keyed, &data, usize::MAX)
        );
    }

    #[test]
    fn a_short_piece_is_one_chunk_and_nothing_is_none() {
        let chunker = Chunker::new(64 << 10, &Keys::plaintext());
        assert_eq!(cuts(&chunker, b"hello", usize::MAX), [5]);
        assert_eq!(chunker.cut(&[], true, &mut Scan::default()), None);
    }
}
