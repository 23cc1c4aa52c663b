//! What every `/api/v1` operation can answer besides its own responses,
//! added to the OpenAPI document in one place so that no handler can forget
//! one: 401 on authenticated routes, 403 on admin routes, 503 where the
//! accounts database may be needed, 400/415/422 on
//! JSON bodies, 400 on query strings and workspace paths (with the path
//! rules). `.ci/schemathesis.sh` checks the document against the server.

use crate::auth::Mode;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaType, Type};
use utoipa::openapi::{Content, OpenApi, Ref, RefOr, Required, Response};
use warren_protocol::path::{MAX_NAME_BYTES, MAX_PATH_BYTES};

fn path_rules() -> String {
    format!(
        "Relative to the workspace, `/`-separated UTF-8: no leading `/`, no `.` or `..` \
         component, no NUL, backslash or control character; names at most {MAX_NAME_BYTES} \
         bytes, the whole path at most {MAX_PATH_BYTES}. Anything else is a 400."
    )
}

/// The characters `path::check` refuses (NUL, backslash, Unicode control
/// characters; bidi controls and zero-width characters, which issue 9's
/// finding 16 refuses), and no leading `/`, as a pattern for workspace
/// paths. (`.`/`..` components are refused too; a pattern cannot say so
/// simply.) Keep in step with `warren_protocol::path::check`.
const PATH_PATTERN: &str = concat!(
    r"^([^/\u0000-\u001F\u007F-\u009F\\\u061C\u200B-\u200F\u202A-\u202E\u2060\u2066-\u2069\uFEFF]",
    r"[^\u0000-\u001F\u007F-\u009F\\\u061C\u200B-\u200F\u202A-\u202E\u2060\u2066-\u2069\uFEFF]*)?$"
);

fn error(description: &str) -> RefOr<Response> {
    let mut response = Response::new(description);
    response.content.insert(
        "application/json".into(),
        Content::new(Some(Ref::from_schema_name("ErrorBody"))),
    );
    RefOr::T(response)
}

/// Adds `status` (described) unless the operation documents it already; if
/// it does and `also` is given, appends `also` to its description.
fn ensure(op: &mut Operation, status: &str, description: &str, also: Option<&str>) {
    match op.responses.responses.get_mut(status) {
        None => {
            op.responses
                .responses
                .insert(status.to_string(), error(description));
        }
        Some(RefOr::T(response)) => {
            if let Some(also) = also {
                if !response.description.contains(also) {
                    response.description = format!("{} ({also})", response.description);
                }
            }
        }
        Some(RefOr::Ref(_)) => {}
    }
}

fn complete_operation(path: &str, op: &mut Operation) {
    let secured = op
        .security
        .as_ref()
        .is_some_and(|requirements| !requirements.is_empty());
    if secured {
        ensure(
            op,
            "401",
            "Not logged in, or the session or token has ended",
            None,
        );
    }
    if path.starts_with("/api/v1/admin/") {
        ensure(op, "403", "Administrators only", None);
    }
    // A credential not in the session cache, a login or a sign-up reads
    // the accounts database; while it is out of reach, that is a 503.
    if secured || path.starts_with("/api/v1/auth/") {
        ensure(
            op,
            "503",
            "The accounts database is unavailable (`database_unavailable`, with \
             `Retry-After`): nothing was changed",
            Some("or the accounts database is unavailable: `database_unavailable`"),
        );
    }
    let json_body = op
        .request_body
        .as_ref()
        .is_some_and(|body| body.content.contains_key("application/json"));
    if json_body {
        ensure(
            op,
            "400",
            "The body is not well-formed JSON",
            Some("or malformed JSON"),
        );
        ensure(op, "415", "The body is not `application/json`", None);
        ensure(
            op,
            "422",
            "The JSON does not fit: a missing, unknown or out-of-range field",
            None,
        );
    }
    let parameters = op.parameters.as_deref().unwrap_or_default();
    if parameters
        .iter()
        .any(|p| matches!(p.parameter_in, ParameterIn::Query))
    {
        ensure(
            op,
            "400",
            "A malformed query string",
            Some("or a malformed query string"),
        );
    }
    let rules = path_rules();
    let mut workspace_path = false;
    for parameter in op.parameters.iter_mut().flatten() {
        let template = path.starts_with("/api/v1/templates/") && parameter.name == "name";
        if matches!(parameter.parameter_in, ParameterIn::Path)
            && (matches!(parameter.name.as_str(), "path" | "dir") || template)
        {
            workspace_path = true;
            let described = parameter.description.take().unwrap_or_default();
            parameter.description = Some(format!("{described} {rules}").trim().to_string());
            if let Some(RefOr::T(Schema::Object(schema))) = &mut parameter.schema {
                schema.pattern = Some(PATH_PATTERN.to_string());
            }
        }
    }
    if workspace_path {
        ensure(
            op,
            "400",
            "A path that breaks the path rules",
            Some("or a path that breaks the path rules"),
        );
    }
}

/// A file's bytes, as `GET /files/{path}` sends them: any media type (it
/// is guessed from the file name).
fn file_bytes() -> Content {
    Content::new(Some(file_schema()))
}

fn file_schema() -> Schema {
    Schema::Object(
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                utoipa::openapi::KnownFormat::Binary,
            )))
            .build(),
    )
}

/// Completes `doc` (the `/api/v1` document of a server in `mode`).
pub(super) fn complete(doc: &mut OpenApi, mode: Mode) {
    for (path, item) in doc.paths.paths.iter_mut() {
        for op in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            complete_operation(path, op);
        }
        // A task's output is bytes, whatever the task wrote.
        if path == "/api/v1/tasks/{id}/output" {
            if let Some(get) = &mut item.get {
                for status in ["200", "206"] {
                    if let Some(RefOr::T(response)) = get.responses.responses.get_mut(status) {
                        response.content.clear();
                        response
                            .content
                            .insert("application/octet-stream".into(), file_bytes());
                    }
                }
            }
        }
        if path == "/api/v1/files/{path}" {
            if let Some(get) = &mut item.get {
                for status in ["200", "206"] {
                    if let Some(RefOr::T(response)) = get.responses.responses.get_mut(status) {
                        response.content.insert("*/*".into(), file_bytes());
                    }
                }
            }
            // An empty body makes an empty file.
            if let Some(body) = item.put.as_mut().and_then(|put| put.request_body.as_mut()) {
                body.required = Some(Required::False);
            }
        }
    }
    // A form needs at least one part with a file name (browsers send the
    // chosen file's name; a part without one is ignored).
    if let Some(body) = doc
        .paths
        .paths
        .get_mut("/api/v1/upload/{dir}")
        .and_then(|item| item.post.as_mut())
        .and_then(|post| post.request_body.as_mut())
    {
        // Other parts are ignored, but their names must fit in a header.
        let part_name = ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(r"^[^\u0000-\u001F\u007F]*$"))
            .build();
        let form = ObjectBuilder::new()
            .property("file", file_schema())
            .required("file")
            .property_names(Some(part_name))
            .build();
        body.content.insert(
            "multipart/form-data".into(),
            Content::new(Some(Schema::Object(form))),
        );
        body.required = Some(Required::True);
    }
    // Destinations are workspace paths too.
    if let Some(components) = &mut doc.components {
        for name in ["Destination", "CloneRequest"] {
            if let Some(RefOr::T(Schema::Object(body))) = components.schemas.get_mut(name) {
                if let Some(RefOr::T(Schema::Object(to))) = body.properties.get_mut("to") {
                    to.pattern = Some(PATH_PATTERN.to_string());
                    let described = to.description.take().unwrap_or_default();
                    to.description = Some(format!("{described} {}", path_rules()).trim().into());
                }
            }
        }
    }
    tasks_schemas(doc);
    // The same request body serves both modes; in multi-user mode the
    // server requires `username`.
    if mode == Mode::Multi {
        if let Some(components) = &mut doc.components {
            if let Some(RefOr::T(Schema::Object(login))) =
                components.schemas.get_mut("LoginRequest")
            {
                if !login.required.iter().any(|field| field == "username") {
                    login.required.push("username".into());
                }
                if let Some(RefOr::T(Schema::Object(username))) =
                    login.properties.get_mut("username")
                {
                    username.schema_type = SchemaType::Type(Type::String);
                }
            }
        }
    }
}

/// What `POST /tasks` checks, as far as a schema can say it: a command is
/// 1-1024 arguments or a shell line with something in it, none with a
/// NUL; environment names `[A-Za-z_][A-Za-z0-9_]*`, at most 256, values
/// without NUL; stdin at most 1 MiB; `cwd` a workspace path.
fn tasks_schemas(doc: &mut OpenApi) {
    use utoipa::openapi::schema::{AdditionalProperties, ArrayBuilder, OneOfBuilder};
    let Some(components) = &mut doc.components else {
        return;
    };
    let no_nul = |pattern: &str| {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(pattern))
            .build()
    };
    let argv = ArrayBuilder::new()
        .items(no_nul(r"^[^\u0000]*$"))
        .min_items(Some(1))
        .max_items(Some(crate::http::api::tasks::MAX_ARGS));
    let line = no_nul(r"^[^\u0000]*\S[^\u0000]*$");
    let command = OneOfBuilder::new()
        .item(Schema::Array(argv.build()))
        .item(Schema::Object(line))
        .description(Some(
            "An argument vector (the program first), or a shell line run by `/bin/sh -c`",
        ));
    components.schemas.insert(
        "TaskCommand".into(),
        RefOr::T(Schema::OneOf(command.build())),
    );
    if let Some(RefOr::T(Schema::Object(start))) = components.schemas.get_mut("StartTask") {
        let env = ObjectBuilder::new()
            .schema_type(SchemaType::from_iter([Type::Object, Type::Null]))
            .property_names(Some(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some("^[A-Za-z_][A-Za-z0-9_]*$")),
            ))
            .additional_properties(Some(AdditionalProperties::RefOr(RefOr::T(Schema::Object(
                no_nul(r"^[^\u0000]*$"),
            )))))
            .max_properties(Some(crate::http::api::tasks::MAX_ENV_VARS))
            .description(Some(
                "Variables added to the sandbox's clean environment; their values are never stored",
            ));
        start
            .properties
            .insert("env".into(), RefOr::T(Schema::Object(env.build())));
        if let Some(RefOr::T(Schema::Object(stdin))) = start.properties.get_mut("stdin") {
            stdin.max_length = Some(crate::http::api::tasks::MAX_STDIN);
        }
        if let Some(RefOr::T(Schema::Object(cwd))) = start.properties.get_mut("cwd") {
            cwd.pattern = Some(PATH_PATTERN.to_string());
            let described = cwd.description.take().unwrap_or_default();
            cwd.description = Some(format!("{described} {}", path_rules()).trim().into());
        }
    }
}
