/dev/fd/3: line 51: ./dpt: No such file or directory
