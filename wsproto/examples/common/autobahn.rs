//! What the two Autobahn|Testsuite client drivers (`autobahn_client`,
//! blocking, and `tokio_autobahn_client`) share: their command line and
//! the fuzzing server's URLs. Each keeps its own case loop: one is a
//! blocking loop and the other an async one, and a driver abstract over
//! both would be longer than the ten lines it saves.

use wsproto::{deflate::DeflateConfig, Config, Event};

/// The command line: `[--url ws://HOST:PORT] [--agent NAME] [--deflate]`
/// (`AUTOBAHN_URL` / `AUTOBAHN_AGENT` from `test-client.sh` when the flags
/// are absent).
pub struct Args {
    /// The fuzzing server, without a trailing `/`.
    pub url: String,
    pub agent: String,
    /// With `--deflate` each case offers permessage-deflate with the
    /// `client_no_context_takeover` hint and `client_max_window_bits`, so
    /// the fuzzing server can accept it with each of its 13.x settings.
    pub config: Config,
}

impl Args {
    /// Parses the command line of `example`; exits with its usage on a
    /// bad one.
    pub fn parse(example: &str, default_agent: &str) -> Self {
        let mut url =
            std::env::var("AUTOBAHN_URL").unwrap_or_else(|_| "ws://127.0.0.1:9001".into());
        let mut agent = std::env::var("AUTOBAHN_AGENT").unwrap_or_else(|_| default_agent.into());
        let mut config = Config::default();
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            if arg == "--deflate" {
                config = config.deflate(DeflateConfig::default().no_context_takeover(true));
                continue;
            }
            match (arg.as_str(), args.next()) {
                ("--url", Some(u)) => url = u,
                ("--agent", Some(a)) => agent = a,
                _ => {
                    eprintln!("usage: {example} [--url ws://HOST:PORT] [--agent NAME] [--deflate]");
                    std::process::exit(2);
                }
            }
        }
        let url = url.trim_end_matches('/').to_string();
        Self { url, agent, config }
    }

    pub fn count_url(&self) -> String {
        format!("{}/getCaseCount", self.url)
    }

    pub fn case_url(&self, case: u32) -> String {
        format!("{}/runCase?case={case}&agent={}", self.url, self.agent)
    }

    /// Asks the server to write its reports (done once it has closed).
    pub fn report_url(&self) -> String {
        format!("{}/updateReports?agent={}", self.url, self.agent)
    }
}

/// The case count from the server's first message.
pub fn case_count(event: Event) -> Result<u32, wsproto::Error> {
    match event {
        Event::Text(t) => t.parse().map_err(|_| wsproto::Error::Closed),
        _ => Err(wsproto::Error::Closed),
    }
}
