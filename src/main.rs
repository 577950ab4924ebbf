use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = labelwall::cli::Cli::parse();
    match labelwall::cli::execute(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // Config errors are already one line per problem; anything else gets its chain.
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
