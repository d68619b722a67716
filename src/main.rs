//! The `image-sync` binary: parse arguments, set up logging, run, exit.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = image_sync::input::cli::Cli::parse();
    image_sync::output::logging::init(cli.log_format);
    ExitCode::from(image_sync::run(&cli))
}
