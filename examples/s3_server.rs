//! The tests' S3 server (tests/testsuite/support/s3_server.rs: s3s-fs with
//! ETags and If-Match) as a program, for the benchmark (bench/s3.py) and for
//! trying a run on a bucket by hand:
//!
//!     cargo run --release --example s3_server -- ROOT [ADDRESS]
//!
//! serves ROOT (a bucket is a directory of it) on ADDRESS (default
//! 127.0.0.1:0), prints its endpoint on the first line of stdout, and runs
//! until killed. The credentials are the tests' own (printed too).

#[allow(dead_code)]
#[path = "../tests/testsuite/support/s3_server.rs"]
mod s3_server;

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(root) = args.next() else {
        eprintln!("usage: s3_server ROOT [ADDRESS]");
        std::process::exit(2);
    };
    let address = args.next().unwrap_or_else(|| "127.0.0.1:0".into());
    let address = address.parse().unwrap_or_else(|e| {
        eprintln!("s3_server: {address}: {e}");
        std::process::exit(2);
    });
    let server = s3_server::S3Server::start(std::path::Path::new(&root), address);
    println!("{}", server.endpoint);
    println!("AWS_ACCESS_KEY_ID={}", s3_server::ACCESS_KEY);
    println!("AWS_SECRET_ACCESS_KEY={}", s3_server::SECRET_KEY);
    loop {
        std::thread::park();
    }
}
