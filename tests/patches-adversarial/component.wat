;; A component, not a core module.
;; expect: patch_rejected encoded as a component
(component
  (core module $m (memory (export "memory") 1) (func (export "heal") (result i32) (i32.const 0)))
  (core instance (instantiate $m)))
