//! Reads an object by range the way a worker reads its chunk
//! (`mixtape::place::open_range`), and prints how fast: the range-read
//! throughput figure of BENCHMARKS.md.
//!
//!     s3_read s3://BUCKET/KEY [FROM TO]
//!
//! The AWS_* variables say where the bucket is, as for the harness.

use std::io::Read;
use std::path::Path;
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(url) = args.first() else {
        anyhow::bail!("usage: s3_read s3://BUCKET/KEY [FROM TO]");
    };
    let from = args.get(1).map_or(Ok(0), |a| a.parse())?;
    let to = args.get(2).map_or(Ok(u64::MAX), |a| a.parse())?;
    let started = Instant::now();
    let mut reader = mixtape::place::open_range(Path::new(url), from, to)?;
    let mut buffer = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "s3_read: {total} bytes in {secs:.3} s: {:.0} MB/s",
        total as f64 / secs / 1e6
    );
    Ok(())
}
