;; phoenix's address file, named directly.
;; expect: capability_denied phoenix's own files
(module
  (import "phoenix" "action" (func $action (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "{\"kind\":\"write_file\",\"path\":\"data/phoenix.addr\",\"content\":\"127.0.0.1:1\"}")
  (func (export "heal") (result i32)
    (drop (call $action (i32.const 0) (i32.const 72)))
    (i32.const 0)))
