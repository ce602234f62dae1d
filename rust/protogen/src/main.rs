//! Regenerates the checked-in Rust protobuf types, `rust/core/src/proto/switchpoint.v1.rs`, from
//! `protos/switchpoint/v1/router.proto`.
//!
//! `--check` generates into a temporary directory and fails if the checked-in file differs, so a
//! proto edit without regeneration (or a hand edit of generated code) never lands; it is the Rust
//! half of `make lint`'s drift check, beside `scripts/gen_protos.py --check` for Python.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::{env, fs};

use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::FileDescriptorSet;

const PROTO: &str = "switchpoint/v1/router.proto";
const GENERATED: &str = "switchpoint.v1.rs";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// proto3 writes a double unless its bits are all zero, so -0.0 goes on the wire; prost's
/// generated encoder compares with `!= 0.0` and drops it (tokio-rs/prost#1177). Generated as
/// explicit presence (`Option<f64>`, the same wire format), such a double is written exactly when
/// the core sets it, and the core sets it by bits (`proto::implicit`).
fn doubles_as_explicit(descriptors: &mut FileDescriptorSet) {
    for message in descriptors
        .file
        .iter_mut()
        .flat_map(|file| file.message_type.iter_mut())
    {
        for field in &mut message.field {
            if field.r#type() == Type::Double
                && field.label() == Label::Optional
                && field.oneof_index.is_none()
            {
                field.proto3_optional = Some(true);
            }
        }
    }
}

fn generate(out_dir: &Path) -> Result<PathBuf, String> {
    let protos = root().join("protos");
    let mut descriptors = protox::compile([PROTO], [&protos]).map_err(|e| format!("{e:?}"))?;
    doubles_as_explicit(&mut descriptors);
    prost_build::Config::new()
        .out_dir(out_dir)
        .compile_fds(descriptors)
        .map_err(|e| e.to_string())?;
    Ok(out_dir.join(GENERATED))
}

fn run(check: bool) -> Result<(), String> {
    let target = root().join("rust/core/src/proto").join(GENERATED);
    let scratch = env::temp_dir().join(format!("switchpoint-protogen-{}", std::process::id()));
    fs::create_dir_all(&scratch).map_err(|e| e.to_string())?;
    let result = generate(&scratch).and_then(|generated| {
        let fresh = fs::read(&generated).map_err(|e| e.to_string())?;
        if check {
            if fs::read(&target).ok().as_deref() != Some(fresh.as_slice()) {
                return Err(format!(
                    "generated Rust protobuf code is stale: {GENERATED}\n\
                     run `make protos` and commit the result"
                ));
            }
            println!("Rust protobuf code is up to date (1 file)");
        } else {
            fs::write(&target, fresh).map_err(|e| e.to_string())?;
            println!("wrote rust/core/src/proto/{GENERATED}");
        }
        Ok(())
    });
    // Best effort: a leftover scratch directory in the temp dir harms nothing.
    let _ = fs::remove_dir_all(&scratch);
    result
}

fn main() -> ExitCode {
    let check = match env::args().nth(1).as_deref() {
        None => false,
        Some("--check") => true,
        Some(other) => {
            eprintln!("unknown argument {other}; usage: switchpoint-protogen [--check]");
            return ExitCode::FAILURE;
        }
    };
    match run(check) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}
