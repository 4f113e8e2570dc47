;; A name with backslashes, which Linux takes as one odd name beside allowed/.
;; expect: capability_denied is not under a writable directory
(module
  (import "phoenix" "action" (func $action (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "{\"kind\":\"write_file\",\"path\":\"allowed\\\\..\\\\pwned\",\"content\":\"x\"}")
  (func (export "heal") (result i32)
    (drop (call $action (i32.const 0) (i32.const 63)))
    (i32.const 0)))
