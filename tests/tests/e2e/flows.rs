use floq_tests as _;
