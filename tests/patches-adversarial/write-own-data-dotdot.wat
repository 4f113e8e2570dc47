;; phoenix's store, climbing out of allowed/ with `..`.
;; expect: capability_denied phoenix's own files
(module
  (import "phoenix" "action" (func $action (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "{\"kind\":\"write_file\",\"path\":\"allowed/../data/store/conf\",\"content\":\"x\"}")
  (func (export "heal") (result i32)
    (drop (call $action (i32.const 0) (i32.const 71)))
    (i32.const 0)))
