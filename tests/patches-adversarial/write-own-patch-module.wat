;; Another patch's module, to change what it plans.
;; expect: capability_denied phoenix's own files
(module
  (import "phoenix" "action" (func $action (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "{\"kind\":\"write_file\",\"path\":\"patches/fine/patch.wat\",\"content\":\"(module)\"}")
  (func (export "heal") (result i32)
    (drop (call $action (i32.const 0) (i32.const 74)))
    (i32.const 0)))
