//! Parsing a generated 10,000-instruction Dockerfile (AST and typed layer).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};

/// A realistic mix: multi-stage, continuations, JSON and shell forms,
/// ENV/LABEL pairs, flags, mounts and the occasional heredoc.
fn generate(instructions: usize) -> String {
    let mut s = String::from("# syntax=docker/dockerfile:1\nARG BASE=debian:12\n");
    let mut n = 1;
    let mut i = 0;
    while n < instructions {
        let line = match i % 12 {
            0 => format!("FROM ${{BASE}} AS stage{i}\n"),
            1 => format!("ENV PATH=/opt/{i}/bin:$PATH LANG=C.UTF-8 N{i}=\"value {i}\"\n"),
            2 => format!(
                "RUN --mount=type=cache,target=/var/cache/apt,sharing=locked \\\n    apt-get update \\\n    && apt-get install -y pkg{i} \\\n    && rm -rf /var/lib/apt/lists/*\n"
            ),
            3 => format!("COPY --from=stage0 --chown=1000:1000 --link src/{i} /app/{i}/\n"),
            4 => format!("LABEL org.example.version=\"{i}\" org.example.name=kiln\n"),
            5 => format!("WORKDIR /app/{i}\n"),
            6 => format!("RUN [\"/bin/sh\", \"-c\", \"echo {i} > /tmp/{i}\"]\n"),
            7 => format!("ARG V{i}=default\n"),
            8 => "EXPOSE 80/tcp 443/tcp\n".to_string(),
            9 => format!("COPY <<EOF /etc/conf{i}\nkey={i}\nother=$HOME\nEOF\n"),
            10 => "USER app:app\n".to_string(),
            _ => "CMD [\"python3\", \"-m\", \"flask\", \"run\", \"--host=0.0.0.0\"]\n".to_string(),
        };
        s.push_str(&line);
        n += 1;
        i += 1;
    }
    s
}

fn bench(c: &mut Criterion) {
    let src = generate(10_000);
    let df = kiln_parser::parse(&src).expect("generated Dockerfile parses");
    assert_eq!(df.nodes.len(), 10_000);
    kiln_parser::parse_stages(&df).expect("generated Dockerfile is valid");

    let mut g = c.benchmark_group("parse_10k_instructions");
    g.sample_size(50);
    g.bench_function("parse", |b| b.iter(|| kiln_parser::parse(black_box(&src))));
    g.bench_function("parse+parse_stages", |b| {
        b.iter(|| {
            let df = kiln_parser::parse(black_box(&src)).expect("parses");
            kiln_parser::parse_stages(&df)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
