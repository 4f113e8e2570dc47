;; Not even valid WebAssembly text. Arriving by hot reload, the reload is refused and the
;; problem shown in /readyz; the last good policies and patches stay in force.
;; expect: reload_rejected expected a i32
(module (func (export "heal") (result i32) (i32.const
