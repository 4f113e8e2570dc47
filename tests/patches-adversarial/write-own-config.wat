;; phoenix's config file, by its name in the config folder.
;; expect: capability_denied phoenix's own files
(module
  (import "phoenix" "action" (func $action (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "{\"kind\":\"write_file\",\"path\":\"phoenix.toml\",\"content\":\"listen = \\\"0.0.0.0:7070\\\"\\n\"}")
  (func (export "heal") (result i32)
    (drop (call $action (i32.const 0) (i32.const 83)))
    (i32.const 0)))
