//! The `bigsmall` binary: parse arguments, dispatch to `cli/<command>.rs`, map the outcome to
//! an exit code (0 ok, 1 failure, 2 usage, 3 integrity check failed).

mod cli;

use clap::Parser;

fn main() {
    let args = cli::Cli::parse();
    bigsmall::fsutil::remove_temps_on_interrupt();
    bigsmall::fsutil::file_size_limit_is_an_error();
    bigsmall::fsutil::stop_on_sigbus();
    let code = match cli::run(args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("bigsmall: {}", cli::one_line(&err));
            cli::exit_code(&err)
        }
    };
    // A report that could not be written is a failure, unless the command failed already.
    let code = if code == 0 && cli::output_failed() {
        1
    } else {
        code
    };
    std::process::exit(code);
}
