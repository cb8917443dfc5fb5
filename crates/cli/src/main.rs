//! `convex-edge`: one binary, a subcommand per service and tool. Configuration comes from the
//! environment (DESIGN section 4); invalid configuration prints one line and exits with 64.

mod commands;
mod dev;

use std::process::ExitCode;

const USAGE: &str = "\
usage: convex-edge <command>

commands:
  dev                  auth, gateway, query and devconvex in one process (SQLite, generated keys)
  auth                 the auth service (gRPC + HTTP), configured by environment
  gateway              the gateway (HTTP), configured by environment
  query                the query service (Convex proxy), configured by environment
  devconvex            the Convex-compatible development backend (demo app)
  migrate              apply the auth schema to DATABASE_URL (idempotent)
  jwks export          print the static JWKS rows (for `npx convex env set JWKS`)
  jwks rotate          create a new signing key; old keys stay published for the grace period
  convex-auth-config   print the JSON of Convex's auth.config.ts providers
  probe <url>          exit 0 when <url> answers 200 (container health checks)
";

/// Exit code for invalid configuration or usage (EX_USAGE).
const EX_USAGE: u8 = 64;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    if matches!(words.as_slice(), [] | ["-h" | "--help" | "help"]) {
        print!("{USAGE}");
        return if words.is_empty() {
            ExitCode::from(EX_USAGE)
        } else {
            ExitCode::SUCCESS
        };
    }
    let log_format = match std::env::var("LOG_FORMAT").ok().as_deref().map(str::parse) {
        None => edge_telemetry::LogFormat::Pretty,
        Some(Ok(f)) => f,
        Some(Err(message)) => {
            return config_error(&edge_telemetry::ConfigError::new("LOG_FORMAT", message));
        }
    };
    edge_telemetry::init_tracing(log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: failed to start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match words.as_slice() {
            ["dev"] => dev::run().await,
            ["auth"] => commands::auth().await,
            ["gateway"] => commands::gateway().await,
            ["query"] => commands::query().await,
            ["devconvex"] => commands::devconvex().await,
            ["migrate"] => commands::migrate().await,
            ["jwks", "export"] => commands::jwks_export().await,
            ["jwks", "rotate"] => commands::jwks_rotate().await,
            ["convex-auth-config"] => commands::convex_auth_config().await,
            ["probe", url] => commands::probe(url).await,
            _ => Err(commands::Failure::Usage(format!(
                "unknown command `{}`",
                words.join(" ")
            ))),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(commands::Failure::Config(e)) => config_error(&e),
        Err(commands::Failure::Usage(message)) => {
            eprintln!("error: {message}\n\n{USAGE}");
            ExitCode::from(EX_USAGE)
        }
        Err(commands::Failure::Other(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn config_error(e: &edge_telemetry::ConfigError) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(EX_USAGE)
}
