//! The reference baselines of a world (SPEC §4), per document of T, with the real compressors.

use std::io::Write;

use serde::{Deserialize, Serialize};

/// liblzma's `LZMA_PRESET_EXTREME` (the `-e` of `xz -9e`).
const LZMA_PRESET_EXTREME: u32 = 1 << 31;

/// Bits per byte of T under each baseline; lower is better.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Baselines {
    pub uniform: f64,
    /// Cross-entropy of T's bytes under the byte frequencies of the served gold text (add-one).
    pub unigram: f64,
    /// `gzip -9` of each document alone.
    pub gzip: f64,
    /// `xz -9e` of each document alone.
    pub xz: f64,
    /// `xz -9e` of each document given the served gold text C: Σ (|xz(C‖d)| − |xz(C)|).
    pub xz_conditional: f64,
    pub test_bytes: u64,
    pub context_bytes: u64,
    pub seconds: f64,
}

/// Size of `gzip -9` output (zlib's deflate at level 9 with a gzip header, as the gzip program).
pub(crate) fn gzip_size(data: &[u8]) -> u64 {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(9));
    e.write_all(data).expect("in-memory write");
    e.finish().expect("in-memory gzip").len() as u64
}

/// Size of `xz -9e` output (liblzma preset 9 | EXTREME, CRC64 check, as the xz program).
pub(crate) fn xz_size(data: &[u8]) -> u64 {
    let stream =
        xz2::stream::Stream::new_easy_encoder(9 | LZMA_PRESET_EXTREME, xz2::stream::Check::Crc64)
            .expect("xz preset 9e");
    let mut e = xz2::write::XzEncoder::new_stream(Vec::new(), stream);
    e.write_all(data).expect("in-memory write");
    e.finish().expect("in-memory xz").len() as u64
}

/// Unigram cross-entropy in bits per byte of `test` under add-one byte counts of `context`.
pub fn unigram(context: &[u8], test: &[&[u8]]) -> f64 {
    let mut counts = [1u64; 256];
    for &b in context {
        counts[b as usize] += 1;
    }
    let total: u64 = counts.iter().sum();
    let mut bits = 0.0;
    let mut n = 0u64;
    for d in test {
        for &b in *d {
            bits -= (counts[b as usize] as f64 / total as f64).log2();
            n += 1;
        }
    }
    if n == 0 {
        0.0
    } else {
        bits / n as f64
    }
}

/// Computes every baseline; `tick` is called once per finished conditional compression.
pub fn compute(context: &[u8], test: &[&[u8]], tick: &(dyn Fn() + Sync)) -> Baselines {
    let t0 = std::time::Instant::now();
    let total: u64 = test.iter().map(|d| d.len() as u64).sum();
    let per_bit = |bytes: u64| {
        if total == 0 {
            0.0
        } else {
            bytes as f64 * 8.0 / total as f64
        }
    };
    let gz: u64 = test.iter().map(|d| gzip_size(d)).sum();
    let xz: u64 = test.iter().map(|d| xz_size(d)).sum();
    let base = xz_size(context);
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(test.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let cond: u64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let mut sum = 0u64;
                    let mut buf = Vec::with_capacity(context.len() + 64 * 1024);
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(d) = test.get(i) else { break };
                        buf.clear();
                        buf.extend_from_slice(context);
                        buf.extend_from_slice(d);
                        sum += xz_size(&buf).saturating_sub(base);
                        tick();
                    }
                    sum
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("baseline worker"))
            .sum()
    });
    Baselines {
        uniform: 8.0,
        unigram: unigram(context, test),
        gzip: per_bit(gz),
        xz: per_bit(xz),
        xz_conditional: per_bit(cond),
        test_bytes: total,
        context_bytes: context.len() as u64,
        seconds: t0.elapsed().as_secs_f64(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressors_match_the_programs_where_present() {
        let data: Vec<u8> = (0..20_000u32)
            .map(|i| b"the quick brown fox "[(i % 20) as usize] ^ (i % 7) as u8)
            .collect();
        for (prog, args, ours) in [
            ("gzip", vec!["-9", "-c"], gzip_size(&data)),
            ("xz", vec!["-9e", "-c"], xz_size(&data)),
        ] {
            let Ok(mut child) = std::process::Command::new(prog)
                .args(&args)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
            else {
                continue;
            };
            child.stdin.take().unwrap().write_all(&data).unwrap();
            let out = child.wait_with_output().unwrap();
            assert_eq!(out.stdout.len() as u64, ours, "{prog} size differs");
        }
    }

    #[test]
    fn unigram_of_uniform_text() {
        let ctx: Vec<u8> = (0..=255u8).cycle().take(256 * 100).collect();
        let t: Vec<u8> = (0..=255u8).collect();
        let u = unigram(&ctx, &[&t]);
        assert!((u - 8.0).abs() < 1e-9, "{u}");
    }

    #[test]
    fn conditional_helps_on_repeated_text() {
        let ctx = b"alpha beta gamma delta epsilon ".repeat(200);
        let d = b"alpha beta gamma delta epsilon ".repeat(3);
        let b = compute(&ctx, &[&d], &|| {});
        assert!(b.xz_conditional < b.xz, "{b:?}");
    }
}
