//! The `gptx` binary: everything lives in the library; see `gptx::cli`.

fn main() {
    // Die quietly on a closed pipe (`gptx show ... | head`), as command-line tools do.
    // SAFETY: called first thing, before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    std::process::exit(gptx::cli::main());
}
