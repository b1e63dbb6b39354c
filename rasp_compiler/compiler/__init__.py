"""Compiler stages, one module each: validate -> graph -> values -> spaces -> blocks -> layout -> assemble.

Each stage is a pure function from one frozen IR to the next and receives the same `CompilerOptions`.
`rasp_compiler.compiler.compiling` chains them.
"""
