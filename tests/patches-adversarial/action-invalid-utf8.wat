;; An action whose bytes are not UTF-8.
;; expect: sandbox_error invalid unicode code point
(module
  (import "phoenix" "action" (func $action (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "{\"kind\":\"exec\",\"command\":\"o\ffk\"}")
  (func (export "heal") (result i32)
    (drop (call $action (i32.const 0) (i32.const 30)))
    (i32.const 0)))
