//! A mock LLM upstream on a TCP port, for trying the middleware by hand and for load runs.
//!
//! ```text
//! cargo run -p example-mock-upstream -- --listen 127.0.0.1:9000 --tokens 64 --delay-ms 20
//! curl -N localhost:9000/v1/chat/completions -d '{"model":"m","stream":true}'
//! ```
//!
//! `--help` lists the routes and the per-request controls; every control is also a flag that
//! sets the server's default.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::{Arg, Command, CommandFactory, FromArgMatches, Parser};
use tower_sse_mock::{CONTROLS, ControlInfo, MockConfig};

/// mock_upstream: an LLM-like streaming server (tower-sse-mock)
#[derive(Debug, Parser)]
#[command(
    name = "mock_upstream",
    override_usage = "mock_upstream [OPTIONS]    (cargo run -p example-mock-upstream -- [OPTIONS])",
    args_override_self = true
)]
struct Args {
    /// address to bind (default 127.0.0.1:9000)
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "127.0.0.1:9000",
        hide_default_value = true
    )]
    listen: SocketAddr,
    /// model named when a request names none (default mock-model)
    #[arg(long, value_name = "NAME")]
    model: Option<String>,
    /// concurrent streams per HTTP/2 connection (h2c, prior knowledge);
    /// default hyper's 200
    #[arg(long, value_name = "N", verbatim_doc_comment)]
    h2_max_streams: Option<u32>,
}

/// The flag of a control: `--delay-ms V` (`--delay_ms V` too), its value checked as the
/// server will read it.
fn control_flag(control: &ControlInfo) -> Arg {
    let name = control.name;
    let arg = Arg::new(name)
        .long(name.replace('_', "-"))
        .value_name("V")
        .help(format!("default for `{name}`"))
        .value_parser(move |value: &str| {
            MockConfig::new()
                .control(name, value)
                .map(|_| value.to_owned())
                .map_err(|e| e.to_string())
        });
    if name.contains('_') {
        arg.alias(name)
    } else {
        arg
    }
}

/// The command line: the derived flags, one per control (the controls are listed once, in
/// tower-sse-mock), and the mock's routes and controls after the help.
fn command() -> Command {
    Args::command()
        .args(CONTROLS.iter().map(control_flag))
        .after_help(tower_sse_mock::help())
}

/// The address and the server's defaults from `args` (the program's name first),
/// and `--h2-max-streams` when given.
fn parse_from<I, T>(args: I) -> Result<(SocketAddr, MockConfig, Option<u32>), clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let command = command();
    let matches = command.clone().try_get_matches_from(args)?;
    let args = Args::from_arg_matches(&matches)?;
    let mut config = MockConfig::new();
    if let Some(model) = args.model {
        config = config.model(model);
    }
    for control in CONTROLS {
        if let Some(value) = matches.get_one::<String>(control.name) {
            // Checked by the flag's parser already.
            config = config
                .control(control.name, value)
                .map_err(|e| command.clone().error(ErrorKind::ValueValidation, e))?;
        }
    }
    Ok((args.listen, config, args.h2_max_streams))
}

#[tokio::main]
async fn main() -> ExitCode {
    // Exits after `--help`, or with status 2 on a bad flag.
    let (listen, config, h2_max_streams) =
        parse_from(std::env::args_os()).unwrap_or_else(|e| e.exit());
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("error: cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let addr = listener.local_addr().unwrap_or(listen);
    println!("listening on http://{addr}");
    let serve = async move {
        match h2_max_streams {
            Some(n) => tower_sse_mock::serve_with_h2_max_streams(listener, config, n).await,
            None => tower_sse_mock::serve(listener, config).await,
        }
    };
    tokio::select! {
        result = serve => {
            if let Err(e) = result {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
        _ = tokio::signal::ctrl_c() => {}
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        command().debug_assert();
    }

    #[test]
    fn every_control_is_a_flag_in_both_spellings() {
        let (listen, config, h2_max_streams) = parse_from([
            "mock_upstream",
            "--h2-max-streams",
            "1000",
            "--listen=127.0.0.1:0",
            "--delay_ms",
            "5",
            "--headers-delay-ms=7",
            "--tokens",
            "3",
            "--stall-after",
            "none",
            "--model",
            "m",
            "--tokens",
            "4",
        ])
        .unwrap();
        assert_eq!(listen, "127.0.0.1:0".parse().unwrap());
        assert_eq!(config.controls.delay, Duration::from_millis(5));
        assert_eq!(config.controls.headers_delay, Duration::from_millis(7));
        // The last of a repeated flag wins.
        assert_eq!(config.controls.tokens, 4);
        assert_eq!(config.controls.stall_after, None);
        assert_eq!(config.model, "m");
        assert_eq!(h2_max_streams, Some(1000));
    }

    #[test]
    fn defaults_and_bad_values() {
        let (listen, config, h2_max_streams) = parse_from(["mock_upstream"]).unwrap();
        assert_eq!(h2_max_streams, None);
        assert_eq!(listen, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(config.controls, MockConfig::new().controls);
        for bad in [
            &["--tokens", "x"][..],
            &["--chunking", "0"],
            &["--nope", "1"],
            &["--seed"],
            &["--h2-max-streams", "-1"],
        ] {
            let args = std::iter::once("mock_upstream").chain(bad.iter().copied());
            let error = parse_from(args).unwrap_err();
            assert_eq!(error.exit_code(), 2, "{bad:?}");
        }
    }
}
