//! Command-line options of the benchmark harness.

use super::*;

#[derive(Clone, Debug)]
pub(crate) struct Options {
    pub(crate) quick: bool,
    pub(crate) sizes: Vec<usize>,
    pub(crate) dialects: Vec<Dialect>,
    pub(crate) idle: Duration,
    pub(crate) unrelated: usize,
    pub(crate) concurrency: usize,
    pub(crate) create_concurrency: usize,
    pub(crate) operator: PathBuf,
    pub(crate) out: PathBuf,
    pub(crate) name: String,
    pub(crate) keep: bool,
    /// Connect the operator and the floor straight to the apiserver instead of through the counting
    /// proxy (exact request counts are then not available).
    pub(crate) direct: bool,
}

pub(crate) fn parse_duration(text: &str) -> Res<Duration> {
    let text = text.trim();
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map(|i| text.split_at(i))
        .unwrap_or((text, "s"));
    let value: f64 = number.parse()?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" | "" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return bail(format!("not a duration: {text} (use 10s, 5m, 1h)")),
    };
    Ok(Duration::from_secs_f64(seconds))
}

pub(crate) fn parse_dialect(text: &str) -> Res<Dialect> {
    match text.to_ascii_lowercase().as_str() {
        "rfc7591" => Ok(Dialect::Rfc7591),
        "s4s" => Ok(Dialect::S4s),
        "s4slegacy" | "s4s-legacy" => Ok(Dialect::S4sLegacy),
        other => bail(format!(
            "unknown dialect {other} (rfc7591, s4s, s4s-legacy)"
        )),
    }
}

pub(crate) const USAGE: &str = "operator_rollout [--quick] [--sizes 100,1000,5000] [--dialects rfc7591,s4s] \
[--idle 5m] [--unrelated 10000] [--concurrency 32] [--create-concurrency 64] [--operator PATH] \
[--out target/bench] [--name full|quick] [--keep] [--direct]";

pub(crate) fn parse_options() -> Res<Options> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` appends --bench to the arguments of harness = false targets.
    args.retain(|a| a != "--bench");
    let quick = args.iter().any(|a| a == "--quick");
    let mut options = Options {
        quick,
        sizes: if quick {
            vec![50]
        } else {
            vec![100, 1000, 5000]
        },
        dialects: vec![Dialect::Rfc7591, Dialect::S4s],
        idle: Duration::from_secs(if quick { 10 } else { 300 }),
        unrelated: if quick { 500 } else { 10_000 },
        concurrency: 32,
        create_concurrency: 64,
        operator: PathBuf::from(env!("CARGO_BIN_EXE_smart-operator")),
        out: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench"),
        name: if quick { "quick" } else { "full" }.into(),
        keep: false,
        direct: false,
    };
    let mut i = 0;
    while i < args.len() {
        let flag = args[i].clone();
        let mut value = || -> Res<String> {
            i += 1;
            args.get(i)
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value").into())
        };
        match flag.as_str() {
            "--quick" => {}
            "--keep" => options.keep = true,
            "--direct" => options.direct = true,
            "--sizes" => {
                options.sizes = value()?
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| s.trim().parse::<usize>())
                    .collect::<Result<_, _>>()?
            }
            "--dialects" => {
                options.dialects = value()?
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(parse_dialect)
                    .collect::<Res<_>>()?
            }
            "--idle" => options.idle = parse_duration(&value()?)?,
            "--unrelated" => options.unrelated = value()?.parse()?,
            "--concurrency" => options.concurrency = value()?.parse()?,
            "--create-concurrency" => options.create_concurrency = value()?.parse()?,
            "--operator" => options.operator = PathBuf::from(value()?),
            "--out" => options.out = PathBuf::from(value()?),
            "--name" => options.name = value()?,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return bail(format!("unknown argument {other}\nusage: {USAGE}")),
        }
        i += 1;
    }
    if options.sizes.is_empty() || options.dialects.is_empty() {
        return bail("--sizes and --dialects must name at least one value");
    }
    Ok(options)
}
